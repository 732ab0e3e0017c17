"""Run work on many nodes at once, bounded, each node under its own deadline.

Every node ends as data: ``ok`` with the work's value, or ``unreachable`` with
the reason. A watchdog closes the socket of any node that overruns its
deadline, so a stuck library call cannot hold the run; Ctrl-C closes them all.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Generic, TypeVar

from gridctl.core.inventory.model import Node
from gridctl.fleet.ssh import Session, SshOptions, Unreachable, open_session

T = TypeVar("T")

DEFAULT_FORKS = 64
DEFAULT_TIMEOUT = 30.0
WATCHDOG_GRACE = 0.5  # seconds past a node's deadline before its socket is closed


@dataclass(frozen=True)
class NodeResult(Generic[T]):
    node: Node
    value: T | None  # the work's result when the node was reached
    unreachable: Unreachable | None
    seconds: float

    @property
    def reached(self) -> bool:
        return self.unreachable is None


class _Watchdog:
    """Closes sockets whose node has overrun its deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socks: dict[int, tuple[float, socket.socket]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gridctl-watchdog", daemon=True)
        self._thread.start()

    def register(self, key: int, deadline: float, sock: socket.socket) -> None:
        with self._lock:
            self._socks[key] = (deadline, sock)

    def forget(self, key: int) -> None:
        with self._lock:
            self._socks.pop(key, None)

    def close_all(self) -> None:
        with self._lock:
            socks = [s for _, s in self._socks.values()]
            self._socks.clear()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            now = time.monotonic()
            with self._lock:
                late = [k for k, (d, _) in self._socks.items() if now > d + WATCHDOG_GRACE]
                socks = [self._socks.pop(k)[1] for k in late]
            for s in socks:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

    def stop(self) -> None:
        self._stop.set()


Register = Callable[[socket.socket], None]
Task = Callable[[Node, float, Register], T]


def session_task(opts: SshOptions, work: Callable[[Session, float], T]) -> Task[T]:
    """A task that opens the node's session, calls ``work(session, deadline)``, closes it."""

    def task(node: Node, deadline: float, register: Register) -> T:
        session = open_session(node, opts, deadline, register)
        try:
            return work(session, deadline)
        finally:
            session.close()

    return task


def run_on_nodes(
    nodes: Sequence[Node],
    task: Task[T],
    forks: int = DEFAULT_FORKS,
    timeout: float = DEFAULT_TIMEOUT,
    on_done: Callable[[NodeResult[T]], None] | None = None,
) -> list[NodeResult[T]]:
    """Call ``task(node, deadline, register)`` for every node, ``forks`` at a time.

    Results come back in input order; a node that cannot be reached is a result
    too. ``register(sock)`` hands the node's socket to the watchdog.
    """
    watchdog = _Watchdog()
    results: list[NodeResult[T] | None] = [None] * len(nodes)
    workers = max(1, min(forks, len(nodes) or 1))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gridctl-ssh")
    futures: dict[Future[NodeResult[T]], int] = {}
    try:
        futures = {pool.submit(_run_one, task, i, n, timeout, watchdog): i for i, n in enumerate(nodes)}
        _collect(futures, results, on_done)
    except BaseException:  # Ctrl-C: stop queued work, unblock running work, re-raise
        for fut in futures:
            fut.cancel()
        watchdog.close_all()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        watchdog.stop()
    pool.shutdown(wait=True)
    return [r for r in results if r is not None]


def _run_one(task: Task[T], index: int, node: Node, timeout: float, watchdog: _Watchdog) -> NodeResult[T]:
    """``task`` on one node under its own deadline: its value, or why the node was not reached."""
    start = time.monotonic()
    deadline = start + timeout
    try:
        value = task(node, deadline, lambda s: watchdog.register(index, deadline, s))
        return NodeResult(node, value, None, time.monotonic() - start)
    except Unreachable as exc:
        return NodeResult(node, None, exc, time.monotonic() - start)
    except (OSError, EOFError) as exc:  # the watchdog closed the socket under a library call
        late = time.monotonic() >= deadline
        if late:
            exc2 = Unreachable("timeout", f"timed out after {timeout:g}s")
        else:
            exc2 = Unreachable("ssh", f"connection lost: {exc}")
        return NodeResult(node, None, exc2, time.monotonic() - start)
    finally:
        watchdog.forget(index)


def _collect(
    futures: dict[Future[NodeResult[T]], int],
    results: list[NodeResult[T] | None],
    on_done: Callable[[NodeResult[T]], None] | None,
) -> None:
    """Each result into its node's place as it finishes, told to ``on_done`` then."""
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
        for fut in done:
            result = fut.result()
            results[futures[fut]] = result
            if on_done is not None:
                on_done(result)
