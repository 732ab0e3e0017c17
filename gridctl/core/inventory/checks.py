"""The checks a schema is built from: value patterns, limits, and the ``Checker`` that
collects located issues (each ``want_*`` returns the value, or None after recording why).

Pure: no files. ``schema`` builds the grid and site documents with it, and the simulator's
profile files reuse it so their messages read like the inventory's.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gridctl.core.inventory.jurisdictions import GROUPS, is_code
from gridctl.core.inventory.model import Location, TlsFiles
from gridctl.core.inventory.yamldoc import Path

DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:.]+\]?$")
USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$")
JUMP = re.compile(
    r"^([A-Za-z_][A-Za-z0-9_.-]{0,31}@)?[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(:[0-9]{1,5})?$"
)
HEALTH_PATH = re.compile(r"^/[A-Za-z0-9._~/-]{0,200}$")
GPU_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")
PREFIX = re.compile(r"^/$|^(/[A-Za-z0-9._@+-]+)+/?$")
OWNER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}(:[A-Za-z_][A-Za-z0-9_.-]{0,31})?$")
VAR_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
# Names the provisioning templates get from gridctl itself; a var may not take them.
RESERVED_VARS = frozenset({"node", "site", "grid", "profile", "prefix", "owner", "path", "gridctl"})
MAX_VAR_TEXT = 4096

MAX_GPUS_PER_NODE = 256
MAX_COST_PER_GPU_HOUR = 1000.0
MAX_CAPACITY = 1_000_000
MAX_SLO_MS = 600_000.0

TLS_KEYS = ("tls_ca", "tls_cert", "tls_key")
LOCATION_KEYS = {"lat": True, "lon": True}


@dataclass(frozen=True)
class Issue:
    path: Path
    message: str
    at_key: bool = False  # point at the key's line rather than the value's


class Checker:
    """Collects issues; each ``want_*`` returns the value or None when invalid."""

    def __init__(self) -> None:
        self.issues: list[Issue] = []

    def fail(self, path: Path, message: str, at_key: bool = False) -> None:
        self.issues.append(Issue(path, message, at_key))

    def want_mapping(self, value: Any, path: Path, keys: dict[str, bool]) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping of {', '.join(keys)} (got {show(value)})")
            return None
        for key in value:
            if not isinstance(key, str) or key not in keys:
                near = difflib.get_close_matches(str(key), list(keys), n=1, cutoff=0.6)
                hint = f"did you mean '{near[0]}'?" if near else f"expected one of: {', '.join(keys)}"
                self.fail((*path, str(key)), f"unknown key; {hint}", at_key=True)
        for key, required in keys.items():
            if required and key not in value:
                self.fail((*path, key), "missing (required)")
        return value

    def want_list(self, value: Any, path: Path) -> list[Any] | None:
        if not isinstance(value, list):
            self.fail(path, f"must be a list (got {show(value)})")
            return None
        return value

    def want_str(self, value: Any, path: Path, pattern: re.Pattern[str], what: str) -> str | None:
        if not isinstance(value, str):
            extra = _bool_hint(value)
            self.fail(path, f"must be {what} (got {show(value)}){extra}")
            return None
        if not pattern.match(value):
            self.fail(path, f"must be {what} (got {show(value)})")
            return None
        return value

    def want_name(self, value: Any, path: Path) -> str | None:
        what = "a DNS label: lowercase letters, digits and '-', at most 63 characters"
        return self.want_str(value, path, DNS_LABEL, what)

    def want_int(self, value: Any, path: Path, lo: int, hi: int, what: str) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"must be {what} (got {show(value)})")
            return None
        if not lo <= value <= hi:
            self.fail(path, f"must be {what} between {lo} and {hi} (got {value})")
            return None
        return value

    def want_number(self, value: Any, path: Path, lo: float, hi: float, what: str) -> float | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            self.fail(path, f"must be {what} (got {show(value)})")
            return None
        if not lo <= value <= hi:
            self.fail(path, f"must be {what} between {lo:g} and {hi:g} (got {value:g})")
            return None
        return float(value)

    def want_bool(self, value: Any, path: Path) -> bool | None:
        if not isinstance(value, bool):
            self.fail(path, f"must be true or false (got {show(value)})")
            return None
        return value

    def want_code(self, value: Any, path: Path, groups: bool = False) -> str | None:
        what = "an ISO 3166-1 alpha-2 country code such as US or DE"
        if isinstance(value, str) and (is_code(value) or (groups and value in GROUPS)):
            return value
        if isinstance(value, str) and (is_code(value.upper()) or (groups and value.upper() in GROUPS)):
            self.fail(path, f"must be {what} (got {show(value)}); write it in capitals: {value.upper()}")
        else:
            groups_txt = f", or a group: {', '.join(GROUPS)}" if groups else ""
            self.fail(path, f"must be {what}{groups_txt} (got {show(value)}){_bool_hint(value)}")
        return None

    def want_location(self, value: Any, path: Path) -> Location | None:
        loc = self.want_mapping(value, path, LOCATION_KEYS)
        if loc is None:
            return None
        lat = (
            self.want_number(loc.get("lat"), (*path, "lat"), -90, 90, "a latitude") if "lat" in loc else None
        )
        lon = (
            self.want_number(loc.get("lon"), (*path, "lon"), -180, 180, "a longitude")
            if "lon" in loc
            else None
        )
        return Location(lat, lon) if lat is not None and lon is not None else None

    def want_url(self, value: Any, path: Path) -> str | None:
        if not isinstance(value, str):
            self.fail(path, f"must be an http(s) URL (got {show(value)})")
            return None
        try:
            parts = urlsplit(value)
            port_ok = parts.port is None or 0 < parts.port < 65536
        except ValueError:
            parts, port_ok = None, False
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            self.fail(path, f"must be an http(s) URL such as https://site.example.net (got {show(value)})")
            return None
        if not port_ok or any(c.isspace() for c in value):
            self.fail(path, f"is not a valid URL (got {show(value)})")
            return None
        if parts.username or parts.password:
            self.fail(path, "must not carry credentials; name an environment variable in api_key_env")
            return None
        if parts.query or parts.fragment:
            self.fail(path, f"must be a base URL without query or fragment (got {show(value)})")
            return None
        return value.rstrip("/")


def show(value: Any) -> str:
    """How a bad value is quoted in a message: 'four', 12, true, a mapping."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


def _bool_hint(value: Any) -> str:
    if isinstance(value, bool):
        return '; YAML reads yes/no/on/off (and NO, Norway) as booleans: quote it, e.g. "NO"'
    return ""


def check_jump(ck: Checker, value: Any, path: Path) -> str | None:
    what = "a jump host as [user@]host[:port]"
    text = ck.want_str(value, path, JUMP, what)
    if text is not None and parse_jump(text)[2] > 65535:
        ck.fail(path, f"must be {what} with a port up to 65535 (got {show(value)})")
        return None
    return text


def parse_jump(text: str) -> tuple[str | None, str, int]:
    """``[user@]host[:port]`` (already validated) -> (user, host, port)."""
    user, _, rest = text.rpartition("@")
    host, _, port = rest.partition(":")
    return (user or None, host, int(port) if port else 22)


def check_tls_files(ck: Checker, m: dict[str, Any], path: Path) -> TlsFiles:
    """``tls_ca``, ``tls_cert``, ``tls_key`` of a site or of grid.yaml's defaults: file paths as
    written (``load`` resolves them and reads the files). A key alone has no certificate to go with."""
    got: dict[str, str | None] = {}
    for name in TLS_KEYS:
        value = m.get(name)
        if value is None:
            got[name] = None
        elif not isinstance(value, str) or not value or any(c in value for c in "\n\r\0"):
            what = "a PEM file: the CA certificates" if name == "tls_ca" else "a PEM file"
            ck.fail((*path, name), f"must be the path to {what} (got {show(value)}), never its content")
            got[name] = None
        elif "-----BEGIN" in value:
            ck.fail((*path, name), "must be a file path, not PEM text: keep keys out of the inventory")
            got[name] = None
        else:
            got[name] = value
    if got["tls_key"] is not None and got["tls_cert"] is None and "tls_cert" not in m:
        ck.fail((*path, "tls_key"), "needs tls_cert beside it: the client certificate this key is for")
    return TlsFiles(got["tls_ca"], got["tls_cert"], got["tls_key"])


def check_key_path(ck: Checker, value: Any, path: Path) -> str | None:
    if not isinstance(value, str) or not value or any(c in value for c in "\n\r\0"):
        ck.fail(path, f"must be a path to a private key file (got {show(value)})")
        return None
    return value
