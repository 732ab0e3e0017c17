"""``gridctl daemon``: run the placement daemon, ask a running one, render its systemd unit."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gridctl.cli.common import OutputOpt, state_of
from gridctl.core.errors import ExitCode, GridctlError, QuietExit, UnreachableError, UsageError
from gridctl.output import Column, Format, emit, render_table

if TYPE_CHECKING:
    from gridctl.daemon.config import DaemonConfig
    from gridctl.daemon.unit import UnitSpec

app = typer.Typer(
    help="The placement daemon: an OpenAI-compatible proxy to the best site.", no_args_is_help=True
)

ListenOpt = Annotated[
    str, typer.Option("--listen", "-l", help="HOST:PORT to listen on (loopback by default).")
]


@app.command("run")
def run(
    ctx: typer.Context,
    listen: ListenOpt = "127.0.0.1:8080",
    region: Annotated[
        str | None, typer.Option(help="Client region of requests without x-grid-region.")
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="Processes sharing the port (SO_REUSEPORT).")
    ] = 1,
    queue_timeout: Annotated[
        float, typer.Option(min=0.0, help="Seconds a request waits when every site is full.")
    ] = 2.0,
    probe_interval: Annotated[
        float, typer.Option(min=0.2, help="Seconds between active health probes.")
    ] = 5.0,
    drain_timeout: Annotated[
        float, typer.Option(min=0.0, help="Seconds in-flight requests get on SIGTERM.")
    ] = 30.0,
    max_body: Annotated[int, typer.Option(min=1024, help="Largest request body in bytes.")] = 8 * 1024 * 1024,
    slo_policy: Annotated[
        str,
        typer.Option(
            help="When no site is predicted to meet a request's SLO: best-effort sends it to the fastest "
            "(x-grid-slo: expected-miss); strict answers 429 with Retry-After. A request's "
            "x-grid-slo-policy header overrides it."
        ),
    ] = "best-effort",
    head_timeout: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="Seconds a site gets to send an answer's head (a stream: its first byte) before it is "
            "taken for hung and the request fails over [default: 4 x the answer's predicted time "
            "(a stream: to its first token), at least 2 s].",
        ),
    ] = None,
    max_answer: Annotated[
        int,
        typer.Option(
            min=1024,
            help="Largest answer from a site that is not streamed, in bytes (held whole before it is "
            "relayed; over it the client gets 502). Streams are relayed as they come, with no limit.",
        ),
    ] = 64 << 20,
    send_timeout: Annotated[
        float,
        typer.Option(
            min=0.01,
            help="Seconds an answer may wait on a client that reads nothing before the connection is "
            "aborted (its site's slot freed).",
        ),
    ] = 30.0,
    client_head_timeout: Annotated[
        float,
        typer.Option(
            min=0.01,
            help="Seconds a client has to send a whole request head, from its first byte (and a new "
            "connection to send its first byte): 408 after, or closed (slowloris).",
        ),
    ] = 10.0,
    client_body_timeout: Annotated[
        float,
        typer.Option(
            min=0.01,
            help="The longest silence allowed inside a request body: 408 after.",
        ),
    ] = 30.0,
    calibration_probe: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Seconds without an answer from a site's model after which the probe loop sends it a "
            "4-token completion to keep its calibration current; 0: never.",
        ),
    ] = 60.0,
    access_log: Annotated[
        str,
        typer.Option(
            help="One JSON line per inference request (its id, site, model, status, timings, tokens; never "
            "its text): off, stderr, or a FILE appended to (created 0600).",
        ),
    ] = "stderr",
    tls_cert: Annotated[
        Path | None,
        typer.Option(help="Serve https with this PEM certificate chain (reread on SIGHUP).", dir_okay=False),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(help="The PEM private key of --tls-cert (reread on SIGHUP).", dir_okay=False),
    ] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option(
            help="Mutual TLS: every client must show a certificate signed by a CA in this PEM file "
            "(reread on SIGHUP).",
            dir_okay=False,
        ),
    ] = None,
    tokens: Annotated[
        Path | None,
        typer.Option(
            help="A file of client token hashes, one sha256:<hex> a line (# comments); reread on SIGHUP, "
            "so a token is rotated without a restart. Make a line with `gridctl daemon token-hash`.",
            dir_okay=False,
        ),
    ] = None,
    insecure_plaintext: Annotated[
        bool,
        typer.Option(
            "--insecure-plaintext",
            help="Off loopback, serve plain HTTP: only behind a balancer that terminates TLS.",
        ),
    ] = False,
) -> None:
    """Serve /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, /grid/status,
    /grid/route, /metrics and /healthz until SIGTERM (drains) or SIGINT. SIGHUP or an inventory
    change reloads without dropping requests (SIGHUP rereads --tokens and the TLS files too). Off
    loopback it needs a token (GRIDCTL_DAEMON_TOKEN or --tokens) and TLS (or --insecure-plaintext)."""
    from gridctl.daemon.config import DaemonConfig, parse_listen, parse_slo_policy, token_from
    from gridctl.daemon.server import run_daemon

    state = state_of(ctx)
    host, port = parse_listen(listen)
    config = DaemonConfig(
        inventory=state.root,
        host=host,
        port=port,
        region=region,
        token=token_from(state.streams.environ),
        workers=workers,
        queue_timeout_s=queue_timeout,
        probe_interval_s=probe_interval,
        drain_timeout_s=drain_timeout,
        max_body_bytes=max_body,
        slo_policy=parse_slo_policy(slo_policy),
        calibration_probe_s=_finite_seconds(calibration_probe, "--calibration-probe"),
        head_timeout_s=None if head_timeout is None else _finite_seconds(head_timeout, "--head-timeout"),
        max_answer_bytes=max_answer,
        send_timeout_s=_finite_seconds(send_timeout, "--send-timeout"),
        client_head_s=_finite_seconds(client_head_timeout, "--client-head-timeout"),
        client_body_s=_finite_seconds(client_body_timeout, "--client-body-timeout"),
        access_log=access_log,
        tokens_file=tokens,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        insecure_plaintext=insecure_plaintext,
    )
    _preflight(config)
    if workers == 1:
        run_daemon(config, state.streams.environ)
        return
    _run_workers(config, dict(state.streams.environ))


def _preflight(config: DaemonConfig) -> None:
    """Refuse, before serving or forking, what would fail later: an insecure listener, a
    certificate or token file that cannot be used, an access log that cannot be written,
    a bad inventory or region."""
    from gridctl.daemon.accesslog import open_access_log
    from gridctl.daemon.config import check_security
    from gridctl.daemon.loading import load_client_tokens, load_listener_tls, load_state

    check_security(config)
    load_listener_tls(config)
    load_client_tokens(config)
    log = open_access_log(config.access_log)
    if log is not None:
        log.close()
    load_state(config)


def _absolute(path: Path | None) -> str | None:
    return None if path is None else str(path.expanduser().resolve())


def _check_url(url: str) -> None:
    """``--url``: http(s), a host, a port in range; else a usage error before any connection."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when not a number or out of range
    except ValueError as exc:
        raise UsageError(f"--url {url}: {exc}", hint="e.g. --url http://127.0.0.1:8080") from None
    bad_host = not parts.hostname or any(c.isspace() for c in url) or port == 0
    if parts.scheme not in ("http", "https") or bad_host:
        raise UsageError(
            f"--url {url}: not an http(s) URL with a host", hint="e.g. --url http://127.0.0.1:8080"
        )


def _finite_seconds(value: float, flag: str) -> float:
    import math

    if not math.isfinite(value):
        raise UsageError(f"{flag} {value}: must be a finite number of seconds")
    return value


def _run_workers(config: DaemonConfig, environ: dict[str, str]) -> None:
    """Fork workers sharing the port; forward SIGTERM/SIGHUP; exit when they all have."""
    import dataclasses
    import shutil
    import signal
    import tempfile
    from pathlib import Path

    from gridctl.daemon.server import run_daemon

    if config.port == 0:
        raise GridctlError("--workers needs a fixed port", hint="e.g. --listen 127.0.0.1:8080")
    # each worker writes its counters here so that any worker's /metrics shows them all
    shared = Path(tempfile.mkdtemp(prefix="gridctl-metrics-"))
    config = dataclasses.replace(config, metrics_dir=shared)
    children = []
    for _ in range(config.workers):
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                run_daemon(config, environ)
            except GridctlError as exc:
                sys.stderr.write(f"error: {exc.message}\n")
                code = exc.exit_code
            os._exit(code)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    worst = 0
    try:
        for child in children:
            _, status = os.waitpid(child, 0)
            worst = max(worst, os.waitstatus_to_exitcode(status))
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    if worst:
        raise QuietExit(worst)


@app.command("token-hash")
def token_hash(ctx: typer.Context) -> None:
    """Read a client token on stdin (never as an argument: it would show in `ps`) and print
    its line for a --tokens file: sha256:<hex>. Surrounding whitespace is not part of it."""
    from gridctl.daemon.tokens import hash_token

    state = state_of(ctx)
    token = state.streams.stdin.read().strip()
    if not token or any(c.isspace() for c in token):
        raise UsageError(
            "expected one token on stdin, without spaces",
            hint='printf %s "$TOKEN" | gridctl daemon token-hash >> tokens',
        )
    state.streams.stdout.write(hash_token(token) + "\n")


STATUS_COLUMNS = [
    Column("SITE", lambda r: r["site"]),
    Column("STATUS", lambda r: r["status"], lambda v: {"ok": "green", "failed": "red"}.get(v)),
    Column("BREAKER", lambda r: r["breaker"]),
    Column("IN-FLIGHT", lambda r: r["in_flight"]),
    Column("REQUESTS", lambda r: r["requests"]),
    Column("FAILURES", lambda r: r["failures"]),
    Column("TTFT-MS", lambda r: r["ttft_ms"]),
    Column("PROBE-MS", lambda r: r["probe_rtt_ms"]),
    Column("PROBE-ERROR", lambda r: r["probe_error"] or "-"),
]


@app.command("status")
def status(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(help="The daemon's base URL.")] = "http://127.0.0.1:8080",
    output: OutputOpt = Format.table,
    tls_ca: Annotated[
        Path | None,
        typer.Option(
            help="Verify an https daemon against this PEM CA file [default: the system's].", dir_okay=False
        ),
    ] = None,
) -> None:
    """Ask a running daemon for its live view of every site. Exit 4 when none answers."""
    state = state_of(ctx)
    _check_url(url)
    data = _fetch_status(url, tls_ca, state.streams.environ)
    emit(
        state.streams,
        output,
        data,
        lambda _wide: (
            f"daemon {data['listen']} pid {data['pid']}: grid {data['grid']}, "
            f"region {data['region'] or '-'}, {data['queued']} queued\n"
            + render_table(data["sites"], STATUS_COLUMNS, state.streams)
        ),
        (s["site"] for s in data["sites"]),
    )
    if any(s["status"] != "ok" for s in data["sites"]):
        raise QuietExit(ExitCode.UNHEALTHY)


def _fetch_status(url: str, tls_ca: Path | None, environ: Mapping[str, str]) -> dict[str, Any]:
    """GET /grid/status with the client token (GRIDCTL_DAEMON_TOKEN) when there is one."""
    import httpx

    from gridctl.daemon.config import token_from

    headers = {}
    token = token_from(environ)  # stripped, as `daemon run` reads it
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        resp = httpx.get(
            url.rstrip("/") + "/grid/status",
            headers=headers,
            timeout=5.0,
            trust_env=False,
            verify=str(tls_ca) if tls_ca is not None else True,
        )
    except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError) as exc:
        raise UsageError(f"--url {url}: {exc}", hint="e.g. --url http://127.0.0.1:8080") from None
    except httpx.HTTPError as exc:
        raise UnreachableError(
            f"no daemon answers at {url}: {exc}", hint="start one with `gridctl daemon run`"
        ) from None
    if resp.status_code != 200:
        raise GridctlError(
            f"daemon at {url} answered HTTP {resp.status_code}: {resp.text[:200]}",
            hint="set GRIDCTL_DAEMON_TOKEN if it needs a token",
        )
    data: dict[str, Any] = resp.json()
    return data


@app.command("unit")
def unit(
    ctx: typer.Context,
    listen: ListenOpt = "127.0.0.1:8080",
    region: Annotated[str | None, typer.Option(help="Default client region.")] = None,
    workers: Annotated[int, typer.Option(min=1)] = 1,
    user: Annotated[str, typer.Option(help="User the service runs as.")] = "gridctl",
    token_file: Annotated[
        str | None, typer.Option(help="EnvironmentFile with GRIDCTL_DAEMON_TOKEN and site keys.")
    ] = None,
    slo_policy: Annotated[
        str, typer.Option(help="best-effort or strict, as for `daemon run --slo-policy`.")
    ] = "best-effort",
    tls_cert: Annotated[
        Path | None, typer.Option(help="As for `daemon run`; readable in the sandbox.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="As for `daemon run` (readable by --user).")] = None,
    tls_client_ca: Annotated[Path | None, typer.Option(help="As for `daemon run`: mutual TLS.")] = None,
    tokens: Annotated[Path | None, typer.Option(help="As for `daemon run`: sha256 hashes of tokens.")] = None,
    insecure_plaintext: Annotated[
        bool, typer.Option(help="As for `daemon run`: plain HTTP off loopback, behind a TLS balancer.")
    ] = False,
) -> None:
    """Print a systemd unit for the daemon (from templates/daemon/gridctl-daemon.service.j2),
    sandboxed to what it needs: read the inventory (and the TLS and token files), write its
    .state, bind --listen. Refused where `daemon run` would refuse to start (off loopback: a
    token from --token-file or --tokens, and TLS or --insecure-plaintext)."""
    from gridctl.daemon.config import parse_slo_policy
    from gridctl.daemon.unit import build_unit, gridctl_command, python_paths

    state = state_of(ctx)
    spec = build_unit(
        inventory=str(state.root.resolve()),
        python=python_paths(),
        gridctl=gridctl_command(),
        listen=listen,
        region=region,
        workers=workers,
        slo_policy=parse_slo_policy(slo_policy),
        user=user,
        token_file=token_file,
        tls_cert=_absolute(tls_cert),
        tls_key=_absolute(tls_key),
        tls_client_ca=_absolute(tls_client_ca),
        tokens=_absolute(tokens),
        insecure_plaintext=insecure_plaintext,
    )
    state.streams.stdout.write(_render_unit(state.templates_dir, spec))


def _render_unit(templates: Path, spec: UnitSpec) -> str:
    """The unit's text; a template that cannot be read or rendered named with its line."""
    import jinja2

    from gridctl.daemon.unit import UNIT_TEMPLATE, render_unit

    try:
        return render_unit(templates, spec)
    except (OSError, jinja2.TemplateError) as exc:
        line = getattr(exc, "lineno", None)
        path = templates / UNIT_TEMPLATE
        raise GridctlError(f"{path}{':' + str(line) if line else ''}: {exc}") from None
