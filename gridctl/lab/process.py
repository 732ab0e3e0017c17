"""The lab process that ``gridctl lab up`` starts: ``python -m gridctl.lab.process --root INV --state DIR``.

Loads the inventory (or writes a synthetic one), starts every site and the
control port, writes the overlay inventory and then ``lab.json``, and serves
until SIGTERM or SIGINT; then stops accepting, gives in-flight responses a
moment, and exits 0. Errors go to its log (stderr) and exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gridctl.core.errors import GridctlError
from gridctl.inventory.load import load_inventory
from gridctl.lab.grid import LabGrid, LabOptions
from gridctl.lab.overlay import write_overlay, write_synthetic_inventory
from gridctl.lab.service import OVERLAY_DIR, SYNTHETIC_DIR, parse_hidden_speed, write_lab_file
from gridctl.lab.site import SiteSpec, build_site_specs
from gridctl.lab.truth import DEFAULT_SEED

log = logging.getLogger("gridctl.lab")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gridctl.lab.process", description=__doc__)
    p.add_argument("--root", required=True, type=Path, help="inventory directory")
    p.add_argument("--state", required=True, type=Path, help="state directory (lab.json, overlay)")
    p.add_argument("--from", dest="region", help="default client region")
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument("--sites", type=int, help="synthetic sites instead of the inventory's")
    p.add_argument("--port-base", type=int)
    p.add_argument("--hidden-speed", type=parse_hidden_speed, default=DEFAULT_SEED, help="SEED or off")
    return p


def _raise_fd_limit() -> None:
    """Each site is a listening socket plus its connections: take the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _serve(args: argparse.Namespace) -> int:
    inv = load_inventory(args.root)
    if args.sites:
        inv = load_inventory(write_synthetic_inventory(inv, args.state / SYNTHETIC_DIR, args.sites))
    specs = build_site_specs(inv, args.region, args.port_base)
    grid = LabGrid(specs, LabOptions(speed=args.speed, hidden_speed=args.hidden_speed), control=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await grid.start()
    try:
        overlay = write_overlay(inv, args.state / OVERLAY_DIR, grid.urls)
        region = specs[0].default_region if specs else args.region
        write_lab_file(args.state, _lab_info(args, specs, grid, overlay, region))
        log.info(
            "serving %d sites (client region %s, speed %g, hidden speed %s); control %s",
            len(specs),
            region,
            args.speed,
            "off" if args.hidden_speed is None else f"seed {args.hidden_speed}",
            grid.control_url,
        )
        await stop.wait()
        log.info("stopping")
    finally:
        await grid.stop()
    log.info("stopped")
    return 0


def _lab_info(
    args: argparse.Namespace, specs: list[SiteSpec], grid: LabGrid, overlay: Path, region: str | None
) -> dict[str, Any]:
    """What ``lab.json`` says of the running lab: this process, its options, the control port,
    the overlay and every site."""
    now = time.time()
    return {
        "pid": os.getpid(),
        "started_at": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        "started_ts": now,
        "source": str(args.root),
        "synthetic": args.sites,
        "from": region,
        "speed": args.speed,
        "hidden_speed": args.hidden_speed,
        "control": grid.control_url,
        "overlay": str(overlay),
        "sites": [
            {
                "name": s.name,
                "url": grid.sites[s.name].url,
                "models": [m.model for m in s.models],
                "health_path": s.health_paths[-1],
            }
            for s in specs
        ],
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _raise_fd_limit()
    try:
        return asyncio.run(_serve(args))
    except GridctlError as exc:
        for problem in getattr(exc, "problems", []):
            log.error("%s", problem)
        log.error("%s%s", exc.message, f" (hint: {exc.hint})" if exc.hint else "")
        return 1
    except Exception:
        log.exception("the lab failed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
