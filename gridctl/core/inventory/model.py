"""The inventory as plain, frozen data. Built by ``load``; read by everything else."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SITE_KINDS: tuple[str, ...] = ("regional-pop", "central-office", "edge", "cloud")


@dataclass(frozen=True)
class Location:
    lat: float
    lon: float


@dataclass(frozen=True)
class Gpus:
    model: str
    count: int


@dataclass(frozen=True)
class Provision:
    """How ``gridctl node provision`` sets up a site or node (``provision:`` in the
    site file or on a node). A node's values override its site's; ``vars`` merge."""

    profile: str | None = None  # templates/provision/<profile>/
    prefix: str | None = None  # absolute directory the profile's remote paths are rooted at
    owner: str | None = None  # "user" or "user:group" for the files pushed
    vars: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Node:
    name: str
    site: str
    host: str
    port: int  # effective: the node's, else grid defaults, else 22
    user: str | None  # effective: the node's, else grid defaults, else the local user
    key: str | None  # private key path; the SSH agent when None
    gpus: Gpus | None
    jump: str | None = None  # "[user@]host[:port]" to reach the node through
    provision: Provision | None = None  # the node's own provision: settings (over its site's)

    @property
    def address(self) -> str:
        """``SITE/NODE``: how targets name a node."""
        return f"{self.site}/{self.name}"


@dataclass(frozen=True)
class ModelServing:
    name: str
    capacity: int  # concurrent requests the site can serve for this model
    tensor_parallel: int | None = None  # GPUs per replica; None: each node's GPU count
    gpu: str | None = None  # the GPU model that serves it on a mixed site; None: the most numerous


@dataclass(frozen=True)
class GpuRow:
    """How fast one GPU serves an 8B-class model (see :mod:`gridctl.core.placement.perf`); the
    built-in table's rows, and the ones ``gpus:`` in grid.yaml adds or overrides."""

    name: str
    ttft_ms: float
    prefill_tok_s: float
    decode_tok_s: float
    kv_tokens: int


@dataclass(frozen=True)
class TlsFiles:
    """Files for TLS toward a site (``tls_ca``, ``tls_cert``, ``tls_key``): paths, never keys.
    Absolute once loaded (relative ones are resolved against the inventory directory)."""

    ca: str | None = None  # trust only the CAs in this PEM file (a private PKI)
    cert: str | None = None  # a client certificate chain, for sites that ask for one
    key: str | None = None  # its private key (None: in the cert file)

    def __bool__(self) -> bool:
        return self.ca is not None or self.cert is not None or self.key is not None

    def over(self, default: TlsFiles) -> TlsFiles:
        """These files over ``default`` (the grid's): the CA, and the certificate with its key (a
        pair: a site's own certificate never takes the grid's key)."""
        cert, key = (self.cert, self.key) if self.cert is not None else (default.cert, default.key)
        return TlsFiles(self.ca or default.ca, cert, key)


@dataclass(frozen=True)
class Site:
    name: str
    kind: str
    region: str
    jurisdiction: str
    location: Location
    endpoint: str
    health_path: str = "/health"  # the endpoint's health route (vLLM: /health)
    api_key_env: str | None = None
    cost_per_gpu_hour: float = 0.0
    drain: bool = False
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    models: tuple[ModelServing, ...] = ()
    nodes: tuple[Node, ...] = ()
    file: str = ""  # relative to the inventory root
    provision: Provision | None = None
    tls: TlsFiles = TlsFiles()  # loaded: the site's own files over the grid's defaults

    def api_key(self, environ: Mapping[str, str]) -> str | None:
        """The key in the variable ``api_key_env`` names, surrounding whitespace stripped
        (a trailing newline from ``$(cat keyfile)`` or an EnvironmentFile); None when unset or blank."""
        key = environ.get(self.api_key_env, "").strip() if self.api_key_env else ""
        return key or None

    def api_key_problem(self, environ: Mapping[str, str]) -> str | None:
        """Why the API key cannot go in a header (a control character inside it), or None.
        Names the variable, never the key."""
        key = self.api_key(environ)
        if key is not None and any(c < " " or c == "\x7f" for c in key):
            return f"API key in ${self.api_key_env} contains a control character; set it to the key alone"
        return None

    def auth_headers(self, environ: Mapping[str, str]) -> dict[str, str]:
        """``Authorization: Bearer ...`` from :meth:`api_key`, when it is set.

        Not validated beyond the stripping: the value may still hold a control character
        (CR, LF, NUL, ...). A caller that sends it checks :meth:`api_key_problem` first and
        reports that reason, or uses an HTTP client that refuses such a value with an error
        of its own; either way the key itself is never shown (http.client's ValueError and
        h11's LocalProtocolError both quote the value)."""
        key = self.api_key(environ)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def serves(self, model: str) -> bool:
        return any(m.name == model for m in self.models)

    @property
    def gpu_count(self) -> int:
        return sum(n.gpus.count for n in self.nodes if n.gpus)


@dataclass(frozen=True)
class Region:
    """A client region: where requests come from, and where their data may go."""

    name: str
    location: Location
    jurisdiction: str
    allowed_jurisdictions: tuple[str, ...]  # as written (codes and groups such as EU)
    allowed: frozenset[str]  # expanded to country codes
    latency_ms: Mapping[str, float] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class SshDefaults:
    user: str | None = None
    port: int = 22
    key: str | None = None
    jump: str | None = None


@dataclass(frozen=True)
class Weights:
    latency: float = 0.6
    cost: float = 0.25
    headroom: float = 0.15


@dataclass(frozen=True)
class Grid:
    name: str
    ssh: SshDefaults = SshDefaults()
    slo_ms: float = 500.0
    weights: Weights = Weights()
    regions: tuple[Region, ...] = ()
    gpus: tuple[GpuRow, ...] = ()  # grid.yaml's own GPU rows, before the built-in table
    weights_given: bool = False  # defaults.weights written (placement no longer reads it: a warning)
    tls: TlsFiles = TlsFiles()  # defaults.tls_ca/tls_cert/tls_key: every site's unless its own


@dataclass(frozen=True)
class Inventory:
    root: Path
    grid: Grid
    sites: tuple[Site, ...]  # sorted by name

    def site(self, name: str) -> Site | None:
        return next((s for s in self.sites if s.name == name), None)

    def region(self, name: str) -> Region | None:
        return next((r for r in self.grid.regions if r.name == name), None)

    def nodes(self) -> Iterator[Node]:
        for site in self.sites:
            yield from site.nodes
