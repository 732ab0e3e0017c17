"""What the daemon loads at start-up and on each reload: the inventory and ``.state`` (as a
``GridState``), the front door's tokens and TLS files, and the process's open-file limit;
and what it writes back: calibration into ``.state``.

A first load must be valid as a whole; a reload goes per file (a file broken on disk keeps
its last good version). A file of the front door that fails to load raises, and the caller
keeps what it had.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gridctl.core.errors import GridctlError, InventoryError, UsageError
from gridctl.core.sitestate import GridState, parse_calibration
from gridctl.daemon.config import DaemonConfig
from gridctl.daemon.state import load_site_contexts
from gridctl.daemon.tokens import Tokens, load_tokens
from gridctl.net.tls import RotatingContext, TlsFileError, load_server_context


def load_state(config: DaemonConfig, previous: GridState | None = None) -> GridState:
    """The inventory and what ``.state`` holds; a first load (no ``previous``) also reads
    the calibration an earlier run wrote, a reload keeps the running one's.

    A first load must be valid as a whole. A reload goes per file: a file that is broken on
    disk runs on its last good version (the one ``previous`` was built from; a new broken file
    is left out) while the other files' changes take effect; ``GridState.stale`` says which
    and why. When even that does not validate, InventoryError, and the caller keeps running."""
    from gridctl.inventory.load import load_keeping_last_good, load_partial
    from gridctl.inventory.state import health_by_site, load_calibration, probe_rtts

    stale: dict[str, dict[str, Any]] = {}
    if previous is None:
        loaded = load_partial(config.inventory)
        if loaded.problems:
            raise InventoryError(list(loaded.problems), str(config.inventory))
    else:
        loaded, broken = load_keeping_last_good(config.inventory, previous.files)
        for rel, problems in broken.items():
            kept = "last good version" if rel in previous.files else "left out (no good version yet)"
            stale[rel] = {"file": rel, "running": kept, "problems": [str(p) for p in problems]}
    inv = loaded.inventory
    assert inv is not None
    if config.region and inv.region(config.region) is None:
        raise GridctlError(
            f"no client region '{config.region}' in {config.inventory}",
            hint=f"regions: {', '.join(r.name for r in inv.grid.regions)}",
        )
    contexts = load_site_contexts(inv)  # before anything changes: a bad file fails the reload
    calibration = None
    if previous is None:
        calibration = parse_calibration(load_calibration(inv.root), time.monotonic(), time.time())
    return GridState(
        inv,
        config,
        probe_rtts(inv.root),
        health_by_site(inv.root),
        previous,
        calibration,
        files=loaded.texts,
        stale=stale,
        contexts=contexts,
    )


def load_listener_tls(config: DaemonConfig) -> ssl.SSLContext | None:
    """The listener's TLS context from --tls-cert/--tls-key/--tls-client-ca; None without them."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    ca = str(config.tls_client_ca) if config.tls_client_ca is not None else None
    try:
        return load_server_context(str(config.tls_cert), str(config.tls_key), ca)
    except TlsFileError as exc:
        raise UsageError(
            str(exc), hint="give PEM files: the certificate chain, its key, the client CA"
        ) from None


def load_client_tokens(config: DaemonConfig) -> Tokens:
    """The tokens that let a client in: GRIDCTL_DAEMON_TOKEN's and --tokens' hashes."""
    digests = load_tokens(config.tokens_file) if config.tokens_file is not None else ()
    return Tokens(digests, config.token)


def save_calibration(state: GridState) -> None:
    """What calibration learned, into ``.state/calibration.json`` (merged with other workers')."""
    from gridctl.inventory.state import write_calibration

    now, wall = time.monotonic(), round(time.time(), 3)
    entries = {
        site: {model: {**entry, "written_at": wall} for model, entry in models.items()}
        for site, models in state.calibration_dict(now).items()
    }
    if entries:
        write_calibration(state.inv.root, entries)


def raise_file_limit() -> tuple[int, int]:
    """RLIMIT_NOFILE's soft limit raised to its hard limit (systemd and most shells start a
    process at 1,024 whatever the hard limit): (the soft limit before, after)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    target = hard if hard != infinite else 1 << 20
    if soft != infinite and soft < target:
        with contextlib.suppress(ValueError, OSError):  # e.g. macOS caps it below the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    after = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft, (1 << 20 if after == infinite else after)


def client_connections(files: int) -> int:
    """Client connections served at once under a limit of ``files`` open files: half, less a
    reserve for the listening sockets, the inventory and logs; each client in flight holds a
    connection to its site too (and the pool keeps some idle)."""
    return max(16, (files - 64) // 2)


def inventory_signature(root: Path) -> tuple[tuple[str, int, int], ...]:
    paths = [root / "grid.yaml", *sorted((root / "sites").glob("*.y*ml"))]
    sig = []
    for p in paths:
        with contextlib.suppress(OSError):
            st = p.stat()
            sig.append((p.name, st.st_mtime_ns, st.st_size))
    return tuple(sig)


async def reload_state(
    config: DaemonConfig, running: GridState, why: str, log: Callable[[str], None]
) -> GridState:
    """The inventory reloaded (``why``: for the log), or ``running`` when even its last good
    files do not validate; the log says which, and which files are broken on disk."""
    try:
        new = await asyncio.to_thread(load_state, config, running)
    except GridctlError as exc:
        log(f"reload ({why}) failed, keeping the running inventory: {exc.message}")
        for problem in getattr(exc, "problems", [])[:20]:
            log(f"  {problem}")
        return running
    for entry in new.stale.values():
        n = len(entry["problems"])
        problems = f"{n} problem{'s' if n != 1 else ''}"
        log(f"{entry['file']} is broken on disk ({problems}); running: {entry['running']}")
        for problem in entry["problems"][:20]:
            log(f"  {problem}")
    stale = f", {len(new.stale)} stale file{'s' if len(new.stale) != 1 else ''}" if new.stale else ""
    log(f"reloaded inventory ({why}): {len(new.sites)} sites{stale}")
    return new  # in-flight requests keep the snapshot they started with


def reload_front(
    config: DaemonConfig, tokens: Tokens, tls: RotatingContext | None, log: Callable[[str], None]
) -> Tokens:
    """Reread --tokens (returned: the tokens to run on) and the listener's TLS files (into
    ``tls``, for new connections; open ones keep theirs); a file that fails to load keeps the
    running one, and the log says why."""
    if config.tokens_file is not None:
        try:
            tokens = load_client_tokens(config)
            log(f"reloaded {len(tokens.digests)} token hashes from {config.tokens_file}")
        except GridctlError as exc:
            log(f"reload of --tokens failed, keeping the running tokens: {exc.message}")
    if tls is not None:
        try:
            listener = load_listener_tls(config)
        except GridctlError as exc:
            log(f"reload of the TLS files failed, keeping the running certificate: {exc.message}")
        else:
            assert listener is not None
            tls.current = listener
            log(f"reloaded the TLS certificate from {config.tls_cert}")
    return tokens
