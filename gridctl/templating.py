"""Where templates come from: --templates DIR, else templates/ beside the
inventory, else the ones shipped inside the package (or the source tree)."""

from __future__ import annotations

from pathlib import Path

from gridctl.core.errors import NotFoundError

_PACKAGE = Path(__file__).resolve().parent


def builtin_templates_dir() -> Path:
    """templates/ as shipped in the wheel (gridctl/_templates) or in a source checkout."""
    shipped = _PACKAGE / "_templates"
    return shipped if shipped.is_dir() else _PACKAGE.parent / "templates"


def builtin_example_inventory() -> Path:
    """The example inventory as shipped in the wheel, or in a source checkout."""
    shipped = _PACKAGE / "_example_inventory"
    return shipped if shipped.is_dir() else _PACKAGE.parent / "inventory"


def resolve_templates_dir(option: str | None, inventory_root: Path) -> Path:
    if option:
        path = Path(option)
        if not path.is_dir():
            raise NotFoundError(
                f"templates directory {path} not found",
                hint="pass --templates DIR with a directory holding provision/ and routing/",
            )
        return path
    beside = inventory_root / "templates"
    if beside.is_dir():
        return beside
    return builtin_templates_dir()
