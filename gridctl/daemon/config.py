"""Daemon configuration: plain data, no side effects until the server loads it."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gridctl.core.errors import UsageError
from gridctl.core.placement.perf import CHARS_PER_TOKEN
from gridctl.core.placement.predict import HUNG_FACTOR, HUNG_FLOOR_S

TOKEN_ENV = "GRIDCTL_DAEMON_TOKEN"
SLO_POLICIES = ("best-effort", "strict")


@dataclass(frozen=True)
class DaemonConfig:
    inventory: Path
    host: str = "127.0.0.1"
    port: int = 8080
    region: str | None = None  # the client region requests come from by default
    token: str | None = None  # GRIDCTL_DAEMON_TOKEN; it or tokens_file required off loopback
    tokens_file: Path | None = None  # --tokens: sha256 hashes of client tokens, reread on SIGHUP
    # --tls-cert/--tls-key (and --tls-client-ca: mutual TLS), reread on SIGHUP
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    insecure_plaintext: bool = False  # off loopback without TLS: behind a TLS-terminating balancer
    workers: int = 1
    max_body_bytes: int = 8 * 1024 * 1024
    connect_timeout_s: float = 2.0  # to a site
    # a site's answer: its head (a stream: its first byte) is due within HUNG_FACTOR x the predicted
    # time (TTFT, or end to end when not streamed), at least HUNG_FLOOR_S (core/placement/predict.py
    # says why); head_timeout_s (--head-timeout) replaces that with one fixed figure
    head_timeout_s: float | None = None
    hung_factor: float = HUNG_FACTOR
    hung_floor_s: float = HUNG_FLOOR_S
    header_timeout_s: float = 30.0  # the head's deadline when there is no prediction; the longest
    # silence between two pieces of a site's answer
    max_answer_bytes: int = 64 << 20  # a site's answer that is not streamed is held whole: 502 over it
    # the daemon's clients: a whole head within client_head_s of its first byte, no silence over
    # client_body_s in a body (408 then), no write waiting on a client that does not read for over
    # send_timeout_s (the connection is aborted and the site's slot freed)
    client_head_s: float = 10.0
    client_body_s: float = 30.0
    send_timeout_s: float = 30.0
    queue_timeout_s: float = 2.0  # how long a request waits when every site is full
    queue_max: int = 1024  # requests waiting at once before shedding at once
    probe_interval_s: float = 5.0
    probe_timeout_s: float = 2.0
    breaker_failures: int = 3  # consecutive failures that open a site's circuit
    breaker_cooldown_s: float = 10.0
    reload_poll_s: float = 2.0  # inventory change detection
    drain_timeout_s: float = 30.0
    affinity_block_chars: int = 256  # prompt block size for the prefix index
    slo_policy: str = "best-effort"  # or "strict": 429 instead of sending a request predicted to miss
    calibration_save_s: float = 30.0  # how often what calibration learned is written to .state
    # a site's model with no answer to learn from for this long gets a tiny generation from the
    # probe loop (4 tokens), so a site placement stopped choosing is measured again; 0: never
    calibration_probe_s: float = 60.0
    access_log: str = "stderr"  # "off", "stderr" or a file (appended to, created 0600)
    # --workers: the directory where each worker writes its counters for the others' /metrics
    metrics_dir: Path | None = None
    metrics_publish_s: float = 1.0  # how often a worker writes them there (and on each scrape)

    @property
    def affinity_block_tokens(self) -> int:
        """The tokens one prefix-index block stands for."""
        return max(1, self.affinity_block_chars // CHARS_PER_TOKEN)

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def gated(self) -> bool:
        """Whether requests need a bearer token (the env's, or one of --tokens)."""
        return self.token is not None or self.tokens_file is not None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``:PORT`` or ``PORT`` -> (host, port); IPv6 as ``[::1]:8080``."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise UsageError(
            f"--listen {text}: expected HOST:PORT", hint="e.g. --listen 127.0.0.1:8080"
        ) from None
    if not 0 <= number <= 65535:
        raise UsageError(f"--listen {text}: port out of range")
    return host, number


def parse_slo_policy(text: str, where: str = "--slo-policy") -> str:
    """``best-effort`` (send to the fastest site, flagged as an expected miss) or ``strict``
    (answer 429 with Retry-After instead)."""
    policy = text.strip().lower()
    if policy not in SLO_POLICIES:
        raise UsageError(f"{where} {text!r}: expected one of {', '.join(SLO_POLICIES)}")
    return policy


def check_security(config: DaemonConfig) -> None:
    """The TLS flags go together; off loopback, a token is required, and TLS unless
    --insecure-plaintext says a balancer in front terminates it: refuse to start otherwise."""
    if (config.tls_cert is None) != (config.tls_key is None):
        given, missing = (
            ("--tls-cert", "--tls-key") if config.tls_key is None else ("--tls-key", "--tls-cert")
        )
        raise UsageError(f"{given} needs {missing}", hint="give both: the certificate chain and its key")
    if config.tls_client_ca is not None and not config.tls:
        raise UsageError("--tls-client-ca needs --tls-cert and --tls-key", hint="mutual TLS is TLS first")
    if config.tls and config.insecure_plaintext:
        raise UsageError("--insecure-plaintext and --tls-cert contradict each other", hint="pick one")
    if config.loopback:
        return
    if not config.gated:
        raise UsageError(
            f"refusing to listen on {config.host} without a token",
            hint=f"set {TOKEN_ENV} or give --tokens FILE (clients send it as 'Authorization: Bearer ...'), "
            "or listen on 127.0.0.1",
        )
    if not config.tls and not config.insecure_plaintext:
        raise UsageError(
            f"refusing to listen on {config.host} in plain HTTP: tokens and prompts would cross the "
            "network in clear text",
            hint="give --tls-cert FILE --tls-key FILE; or, behind a balancer that terminates TLS, "
            "--insecure-plaintext",
        )


def token_from(environ: Mapping[str, str]) -> str | None:
    token = environ.get(TOKEN_ENV, "").strip()
    return token or None
