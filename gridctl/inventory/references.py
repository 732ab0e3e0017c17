"""What refers to a site, node or region from elsewhere, and its removal with them.

A site's name appears in grid.yaml (``regions[].latency_ms``) and in ``.state``
(health verdicts, probe round trips, the daemon's calibration); a node's address
in ``known_hosts``. ``site rm`` / ``node rm`` / ``region rm`` drop these in the
same locked change as the file they edit, and list each thing removed.
Each function takes texts and returns new texts (None: nothing to change).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from gridctl.inventory.state import CALIBRATION_FILE, HEALTH_FILE, PROBES_FILE, STATE_DIR


def drop_latency_entries(doc: Any, sites: frozenset[str]) -> list[str]:
    """Remove ``latency_ms`` entries naming ``sites`` from a grid.yaml document (in place)."""
    removed: list[str] = []
    for region in doc.get("regions") or []:
        latency = region.get("latency_ms") if isinstance(region, dict) else None
        if not isinstance(latency, dict):
            continue
        for site in [s for s in latency if s in sites]:
            del latency[site]
            removed.append(f"grid.yaml: regions.{region.get('name')}.latency_ms.{site}")
    return removed


def _known_host_names(field: str, entries: set[str]) -> bool:
    """Does a known_hosts host field (``a,[b]:2222`` or hashed ``|1|salt|hash``) name an entry?"""
    for name in field.split(","):
        if name.startswith("|1|"):
            try:
                _, _, salt, digest = name.split("|")
                key, want = base64.b64decode(salt), base64.b64decode(digest)
            except ValueError:
                continue
            if any(hmac.compare_digest(_hashed(key, e), want) for e in entries):
                return True
        elif name in entries:
            return True
    return False


def _hashed(salt: bytes, name: str) -> bytes:
    """OpenSSH's HashKnownHosts: HMAC-SHA1 of the name under the line's salt."""
    return hmac.new(salt, name.encode(), hashlib.sha1).digest()


def drop_host_keys(text: str, entries: set[str]) -> tuple[str | None, list[str]]:
    """known_hosts without the lines for ``entries`` (``host`` or ``[host]:port``)."""
    kept: list[str] = []
    removed: list[str] = []
    for line in text.splitlines(keepends=True):
        fields = line.split()
        marker = 1 if fields and fields[0].startswith("@") else 0  # @cert-authority, @revoked
        named = len(fields) > marker + 1 and not line.startswith("#")
        if named and _known_host_names(fields[marker], entries):
            removed.append(f"known_hosts: {fields[marker]} {fields[marker + 1]}")
            continue
        kept.append(line)
    return ("".join(kept) if removed else None), removed


def _read_json(root: Path, name: str) -> dict[str, Any] | None:
    try:
        data = json.loads((root / STATE_DIR / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def drop_state(
    root: Path,
    sites: frozenset[str] = frozenset(),
    nodes: frozenset[str] = frozenset(),
    regions: frozenset[str] = frozenset(),
) -> tuple[dict[str, str], list[str]]:
    """New texts of the ``.state`` files that hold anything about these sites, nodes
    (``site/node``) or regions, and what was taken out. Call holding the .state lock."""
    changes: dict[str, str] = {}
    removed: list[str] = []
    health = _read_json(root, HEALTH_FILE)
    if health is not None:
        hit = False
        for section, names in (("sites", sites), ("nodes", nodes)):
            entries = health.get(section)
            if not isinstance(entries, dict):
                continue
            for key in sorted(entries):
                if key in names or (section == "nodes" and key.split("/", 1)[0] in sites):
                    del entries[key]
                    removed.append(f".state/{HEALTH_FILE}: {section}.{key}")
                    hit = True
        if hit:
            changes[f"{STATE_DIR}/{HEALTH_FILE}"] = _dump(health)
    probes = _read_json(root, PROBES_FILE)
    if probes is not None:
        hit = False
        for region in sorted(probes):
            if region in regions:
                del probes[region]
                removed.append(f".state/{PROBES_FILE}: {region}")
                hit = True
                continue
            entries = probes[region]
            for site in sorted(entries) if isinstance(entries, dict) else []:
                if site in sites:
                    del entries[site]
                    removed.append(f".state/{PROBES_FILE}: {region}.{site}")
                    hit = True
        if hit:
            changes[f"{STATE_DIR}/{PROBES_FILE}"] = _dump(probes)
    calibration = _read_json(root, CALIBRATION_FILE)
    cal_sites = calibration.get("sites") if calibration else None
    if isinstance(cal_sites, dict) and any(s in cal_sites for s in sites):
        for site in sorted(s for s in cal_sites if s in sites):
            del cal_sites[site]
            removed.append(f".state/{CALIBRATION_FILE}: sites.{site}")
        changes[f"{STATE_DIR}/{CALIBRATION_FILE}"] = _dump(calibration)
    return changes, removed
