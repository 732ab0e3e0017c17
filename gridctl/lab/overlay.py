"""Inventories for the lab: the overlay (a copy whose endpoints point at lab sites) and
synthetic grids of N sites.

The overlay copies the inventory directory (not its ``.state``), then, in each
site file, replaces the ``endpoint`` line with the lab site's URL and removes
``api_key_env`` (lab sites take no key), keeping everything else as written.
It is built beside its destination and renamed into place, then loaded to check
that it is valid and points where it should.

Synthetic sites (``lab up --sites N``) sit around the grid's client regions in
turn, with kinds, GPUs and costs cycling so that sites differ; the grid's
regions lose their measured ``latency_ms`` (which name the real sites).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gridctl.core.errors import GridctlError
from gridctl.core.inventory.model import SITE_KINDS, Inventory, Region
from gridctl.core.placement.perf import gpu_perf
from gridctl.inventory.load import GRID_FILE, SITES_DIR, load_inventory

_ENDPOINT = re.compile(r"^endpoint:[ \t]*(?P<value>[^#\n]*?)[ \t]*(?P<comment>#[^\n]*)?$", re.MULTILINE)
_KEY_ENV = re.compile(r"^api_key_env:[ \t]*[^ \t\n#][^\n]*(?:\n|\Z)", re.MULTILINE)
_IGNORE_NAMES = shutil.ignore_patterns(".state", ".gridctl.lock", ".git")


def _IGNORE(directory: str, names: list[str]) -> set[str]:
    """What the overlay does not copy: gridctl's state, git, and anything neither a regular
    file nor a directory (a FIFO would block the copy, a device never end)."""
    skip = set(_IGNORE_NAMES(directory, names))
    for name in names:
        try:
            mode = os.stat(os.path.join(directory, name)).st_mode  # a symlink: what it points at
        except OSError:
            skip.add(name)  # a dangling symlink: nothing to copy
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            skip.add(name)
    return skip


def rewrite_site_text(text: str, url: str) -> str:
    """A site file's text with ``endpoint: url`` and no ``api_key_env``, comments kept."""
    found = list(_ENDPOINT.finditer(text))
    value = found[0]["value"] if len(found) == 1 else ""
    if value and value[0] not in "|>&*!{[":  # a one-line scalar: rewrite the line itself
        m = found[0]
        comment = f"  {m['comment']}" if m["comment"] else ""
        text = text[: m.start()] + f"endpoint: {url}{comment}" + text[m.end() :]
        keys = len(re.findall(r"^api_key_env:", text, re.MULTILINE))
        if keys == 0 or (keys == 1 and _KEY_ENV.search(text)):  # absent, or its value on its line
            return _KEY_ENV.sub("", text)
    from gridctl.inventory.edit import edit_text

    def change(doc: Any) -> None:
        doc["endpoint"] = url
        doc.pop("api_key_env", None)

    return edit_text(text, change)


def write_overlay(inv: Inventory, dest: Path, urls: Mapping[str, str]) -> Path:
    """Write the overlay of ``inv`` at ``dest`` (replacing it) with ``urls`` (site -> URL); return dest."""
    missing = sorted(s.name for s in inv.sites if s.name not in urls)
    if missing:
        raise GridctlError(f"no lab URL for sites {', '.join(missing)}")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(inv.root, tmp, ignore=_IGNORE)
    for site in inv.sites:
        path = tmp / site.file
        path.write_text(
            rewrite_site_text(path.read_text(encoding="utf-8"), urls[site.name]), encoding="utf-8"
        )
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    check = load_inventory(dest)
    wrong = [s.name for s in check.sites if s.endpoint != urls[s.name].rstrip("/")]
    if wrong:
        raise GridctlError(
            f"overlay {dest}: endpoints not rewritten for {', '.join(wrong)}",
            hint="this is a bug in gridctl; report it with the site files",
        )
    return dest


# -- synthetic sites ---------------------------------------------------------------------------------------

# per kind: (GPU models to cycle through, GPUs per site, cost per GPU-hour)
_KIND_SHAPES: dict[str, tuple[tuple[str, ...], int, float]] = {
    "edge": (("L4", "L40S", "RTX PRO 6000"), 2, 0.9),
    "central-office": (("L40S", "RTX PRO 6000", "A100"), 4, 1.4),
    "regional-pop": (("H100", "H200"), 8, 2.2),
    "cloud": (("H100", "A100", "H200"), 8, 3.5),
}
DEFAULT_MODEL = "llama-3.1-8b-instruct"
_PER_REQUEST_TOK_S = 20.0  # capacity: requests a site can run at about this many tokens/s each


def build_synthetic_sites(
    regions: Sequence[Region], n: int, model: str = DEFAULT_MODEL, seed: int = 0
) -> list[dict[str, Any]]:
    """``n`` site documents (as in sites/*.yaml), deterministic for a seed. Pure."""
    if not regions:
        raise GridctlError("synthetic sites need at least one client region in grid.yaml")
    rng = random.Random(seed)
    docs = []
    width = max(3, len(str(n - 1)))
    for i in range(n):
        region = regions[i % len(regions)]
        kind = SITE_KINDS[(i // len(regions) + i) % len(SITE_KINDS)]
        gpus, count, cost = _KIND_SHAPES[kind]
        gpu = gpus[(i // len(SITE_KINDS)) % len(gpus)]
        capacity = max(4, round(count * gpu_perf(gpu).decode_tok_s / _PER_REQUEST_TOK_S))
        name = f"lab-{i:0{width}d}"
        lat = max(-89.0, min(89.0, region.location.lat + rng.uniform(-1.5, 1.5)))
        lon = (region.location.lon + rng.uniform(-1.5, 1.5) + 180.0) % 360.0 - 180.0
        docs.append(
            {
                "name": name,
                "kind": kind,
                "region": region.name,
                "jurisdiction": region.jurisdiction,
                "location": {"lat": round(lat, 4), "lon": round(lon, 4)},
                "endpoint": f"http://{name}.lab.invalid",
                "cost_per_gpu_hour": cost,
                "labels": {"lab": "synthetic"},
                "models": [{"name": model, "capacity": capacity}],
                "nodes": [
                    {
                        "name": f"{name}-gpu-01",
                        "host": f"{name}.lab.invalid",
                        "gpus": {"model": gpu, "count": count},
                    }
                ],
            }
        )
    return docs


def _most_served_model(inv: Inventory) -> str:
    counts: dict[str, int] = {}
    for site in inv.sites:
        for m in site.models:
            counts[m.name] = counts.get(m.name, 0) + 1
    return max(sorted(counts), key=lambda m: counts[m]) if counts else DEFAULT_MODEL


def write_synthetic_inventory(inv: Inventory, dest: Path, n: int) -> Path:
    """An inventory at ``dest`` (replaced) with ``inv``'s grid.yaml and ``n`` synthetic sites serving the
    model most of ``inv``'s sites serve."""
    import yaml

    grid = yaml.safe_load((inv.root / GRID_FILE).read_text(encoding="utf-8"))
    for region in grid.get("regions") or []:
        if isinstance(region, dict):
            region.pop("latency_ms", None)
    shutil.rmtree(dest, ignore_errors=True)
    (dest / SITES_DIR).mkdir(parents=True)
    header = f"# Written by `gridctl lab up --sites {n}` from {inv.root}; generated, do not edit.\n"
    dump = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    (dest / GRID_FILE).write_text(header + yaml.dump(grid, Dumper=dump, sort_keys=False), encoding="utf-8")
    for doc in build_synthetic_sites(inv.grid.regions, n, _most_served_model(inv)):
        text = header + yaml.dump(doc, Dumper=dump, sort_keys=False)
        (dest / SITES_DIR / f"{doc['name']}.yaml").write_text(text, encoding="utf-8")
    return dest
