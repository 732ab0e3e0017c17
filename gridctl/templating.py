"""Templates: where they come from (--templates DIR, else templates/ beside the
inventory, else the ones shipped inside the package or the source tree), and the
one jinja2 environment every renderer uses (:func:`build_environment`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gridctl.core.errors import NotFoundError

if TYPE_CHECKING:
    import jinja2

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


def build_environment(
    directory: Path | None = None, filters: Mapping[str, Callable[..., Any]] | None = None
) -> jinja2.Environment:
    """The jinja2 environment of every template gridctl renders (routing configs, provision
    profiles, the daemon's unit), all of them config files and scripts, never HTML:

    - ``autoescape=False``: text goes out as written (quoting is the filters' job: ``q``, ...);
    - ``undefined=StrictUndefined``: a missing variable is an error, located by the caller,
      never an empty string in a config file;
    - ``trim_blocks`` / ``lstrip_blocks``: a ``{% ... %}`` line leaves no blank line nor indent;
    - ``keep_trailing_newline``: a file ends as its template does.

    ``directory``: where ``get_template`` finds templates (None: ``from_string`` only);
    ``filters``: the caller's own, added to jinja2's."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(directory)) if directory is not None else None,
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(filters or {})
    return env
