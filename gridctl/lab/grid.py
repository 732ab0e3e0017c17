"""Many lab sites in one process: on the caller's event loop (:class:`LabGrid`), or on their own
loop in a background thread (:class:`LabThread`, :func:`run_lab`) for synchronous code and tests.

Each site listens on its own loopback port. With ``control=True`` the grid also
serves a control port: ``GET /lab/sites`` (every site's state) and
``POST /lab/fail`` ``{"site": NAME, "mode": MODE, "delay_ms": N}``; ``gridctl lab``
uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gridctl.core.errors import GridctlError
from gridctl.core.inventory.model import Inventory
from gridctl.lab.formats import error_body
from gridctl.lab.site import SimSite, SiteSpec, build_site_specs
from gridctl.lab.truth import DEFAULT_SEED
from gridctl.net.messages import Request, Response, ServerConfig, json_response
from gridctl.net.server import HttpServer

T = TypeVar("T")


class NoSuchSite(LookupError):
    """No lab site has that name or matches that glob."""


@dataclass(frozen=True)
class LabOptions:
    speed: float = 1.0  # every simulated duration is divided by this
    host: str = "127.0.0.1"
    max_body: int = 4 << 20
    grace_s: float = 1.0  # on stop, how long in-flight responses may finish
    hidden_speed: int | None = DEFAULT_SEED  # each site's true speed (lab.truth); None: the table exactly


class LabGrid:
    """``await grid.start()`` ... ``await grid.stop()``, or ``async with LabGrid(specs) as grid``."""

    def __init__(
        self, specs: Sequence[SiteSpec], options: LabOptions | None = None, control: bool = False
    ) -> None:
        self.options = options or LabOptions()
        self.sites: dict[str, SimSite] = {
            s.name: SimSite(s, self.options.speed, self.options.hidden_speed) for s in specs
        }
        self._specs = {s.name: s for s in specs}
        self._servers: dict[str, HttpServer] = {}  # by site name; "" for the control port
        self._control = control
        self.control_url: str | None = None

    @property
    def urls(self) -> dict[str, str]:
        return {name: site.url for name, site in self.sites.items()}

    async def start(self) -> None:
        try:
            for name, spec in self._specs.items():
                await self._start_site(name, spec.port)
            if self._control:
                server = HttpServer(self._handle_control, ServerConfig(self.options.host, 0, 64 << 10))
                await self._listen("", server, "the lab's control port")
                self.control_url = server.url
        except BaseException:
            await self.stop()
            raise

    async def _start_site(self, name: str, port: int) -> None:
        o = self.options
        server = HttpServer(self.sites[name].handle, ServerConfig(o.host, port, o.max_body))
        await self._listen(name, server, f"site {name}")
        self.sites[name].url = server.url

    async def _listen(self, key: str, server: HttpServer, what: str) -> None:
        try:
            await server.start()
        except OSError as exc:
            port = server.config.port
            raise GridctlError(
                f"{what}: cannot listen on {server.config.host}:{port}: {exc.strerror or exc}",
                hint="choose another --port-base, or leave it out to use free ports" if port else None,
            ) from None
        self._servers[key] = server

    async def stop(self) -> None:
        servers, self._servers = self._servers, {}
        await asyncio.gather(*(s.stop(self.options.grace_s) for s in servers.values()))

    async def stop_site(self, name: str) -> None:
        """Take a site off the network, as a crash would: its port stops listening and its open
        connections are cut at once (in-flight streams end abruptly). Its state is kept."""
        server = self._servers.pop(name, None)
        if server is not None:
            await server.stop(grace=0.0)

    async def restart_site(self, name: str) -> None:
        """Bring a stopped site back on the same port (and URL)."""
        if name not in self._servers:
            await self._start_site(name, int(self.sites[name].url.rsplit(":", 1)[1]))

    async def __aenter__(self) -> LabGrid:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def match(self, pattern: str) -> list[str]:
        """Site names matching a name or a glob ("fra-*"); NoSuchSite when none does."""
        names = [n for n in self.sites if fnmatch.fnmatchcase(n, pattern)]
        if not names:
            import difflib

            near = difflib.get_close_matches(pattern, list(self.sites), n=1)
            hint = f"did you mean '{near[0]}'?" if near else "see `gridctl lab status` for the lab's sites"
            raise NoSuchSite(f"no lab site matches '{pattern}'; {hint}")
        return sorted(names)

    def set_mode(
        self, pattern: str | list[str], mode: str, delay_ms: float | None = None
    ) -> list[dict[str, str]]:
        """Switch the failure mode of every site matching ``pattern`` (a name or a glob; or a
        list of names, as the CLI resolves a target pattern); NoSuchSite when none does,
        ValueError for an unknown mode (and then no site changes)."""
        if isinstance(pattern, list):
            unknown = [n for n in pattern if n not in self.sites]
            if unknown or not pattern:
                raise NoSuchSite(f"no lab site named {', '.join(map(repr, unknown)) or '(none given)'}")
            names = sorted(set(pattern))
        else:
            names = self.match(pattern)
        return [{"site": n, "mode": mode, "previous": self.sites[n].set_mode(mode, delay_ms)} for n in names]

    def states(self) -> list[dict[str, Any]]:
        return [site.state() for site in self.sites.values()]

    async def _handle_control(self, req: Request) -> Response:
        if req.path == "/lab/sites" and req.method == "GET":
            return json_response({"sites": self.states()})
        if req.path == "/lab/fail" and req.method == "POST":
            try:
                body = req.json()
                delay = body.get("delay_ms")
                names = body["sites"] if isinstance(body.get("sites"), list) else str(body["site"])
                changed = self.set_mode(
                    [str(n) for n in names] if isinstance(names, list) else names,
                    str(body["mode"]),
                    None if delay is None else float(delay),
                )
            except NoSuchSite as exc:
                return json_response(error_body(str(exc), code="not_found"), 404)
            except KeyError as exc:
                return json_response(error_body(f"missing field {exc}"), 400)
            except (ValueError, TypeError, AttributeError) as exc:
                return json_response(error_body(str(exc)), 400)
            return json_response({"changed": changed})
        return json_response(error_body(f"no route {req.method} {req.path}"), 404)


class LabThread:
    """A :class:`LabGrid` on its own event loop in a daemon thread. ``with LabThread(specs) as lab:``"""

    def __init__(
        self, specs: Sequence[SiteSpec], options: LabOptions | None = None, control: bool = False
    ) -> None:
        self.grid = LabGrid(specs, options, control)
        self.overlay: Path | None = None  # set by run_lab when asked for one
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def urls(self) -> dict[str, str]:
        return self.grid.urls

    @property
    def control_url(self) -> str | None:
        return self.grid.control_url

    def start(self, timeout: float = 30.0) -> LabThread:
        """Start the sites and return once they listen; a second call does nothing."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="gridctl-lab", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise GridctlError(f"the lab did not start within {timeout:g}s")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self.grid.start())
        except BaseException as exc:  # reported by start() in the caller's thread
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
            loop.run_until_complete(self.grid.stop())
        finally:
            loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the lab's loop (where its state lives) and return its result."""

        async def wrapper() -> T:
            return fn()

        return self.run(wrapper())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the lab's loop (e.g. ``lab.grid.stop_site(name)``) and return its result."""
        if self._loop is None:
            coro.close()
            raise RuntimeError("the lab is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def set_mode(self, pattern: str, mode: str, delay_ms: float | None = None) -> list[dict[str, str]]:
        return self.call(lambda: self.grid.set_mode(pattern, mode, delay_ms))

    def states(self) -> list[dict[str, Any]]:
        return self.call(self.grid.states)

    def state(self, name: str) -> dict[str, Any]:
        return self.call(lambda: self.grid.sites[name].state())

    def stop_site(self, name: str) -> None:
        self.run(self.grid.stop_site(name))

    def restart_site(self, name: str) -> None:
        self.run(self.grid.restart_site(name))

    def __enter__(self) -> LabThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def run_lab(
    inv: Inventory,
    *,
    speed: float = 1.0,
    default_region: str | None = None,
    port_base: int | None = None,
    overlay: Path | None = None,
    control: bool = False,
    grace_s: float = 1.0,
    hidden_speed: int | None = DEFAULT_SEED,
) -> Iterator[LabThread]:
    """One lab site per site of ``inv``, in a background thread, for the ``with`` block.

    ``overlay``: also write there a copy of the inventory whose endpoints point at
    the lab sites (``lab.overlay``). ``hidden_speed``: the seed of the sites' true speeds
    (:mod:`gridctl.lab.truth`), None for the GPU table's timing exactly."""
    specs = build_site_specs(inv, default_region, port_base)
    options = LabOptions(speed=speed, grace_s=grace_s, hidden_speed=hidden_speed)
    with LabThread(specs, options, control) as lab:
        if overlay is not None:
            from gridctl.lab.overlay import write_overlay

            lab.overlay = write_overlay(inv, overlay, lab.urls)
        yield lab
