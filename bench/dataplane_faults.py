"""The data-plane fault matrix, counted: real nginx, HAProxy and Envoy under one fault at a time.

The same cases as the suite (tests/routing/faults.py, asserted by
tests/routing/test_faults_*.py): lab-east's llama route, primaries east-1 (weight 75) and
east-2 (25), backups west-1 and west-2, all stand-in sites on loopback; each case a fresh
grid and data plane rendered by ``route render`` with ``--read-timeout 1``; requests sent
one after another. Faults on east-1 (both primaries for ``503-all``): ``503-one`` /
``503-all`` (503 to every completion, health checks passing), ``drop`` (the connection
closed without an answer), ``hang`` (no answer ever), ``killed`` (stopped: connections
refused), ``unresolvable`` (its endpoint named ``east-1.invalid``).

Columns: sent; answered, by site; lost (not a whole 200); duplicated (two sites answered
one request, or a stream mixed two sites); tries (requests the sites received beyond one
per request: failovers that the client did not see); seconds for the case's requests
(wall time, on a shared machine: an indication, no target).

Run from the repository root::

    python bench/dataplane_faults.py [--requests N] [--planes nginx,haproxy,envoy] [--write-readme]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from inventory_bench import write_readme  # noqa: E402
from placement_bench import describe_machine  # noqa: E402

from tests.routing.conftest import DATA_PLANES, envoy_binary  # noqa: E402
from tests.routing.faults import (  # noqa: E402
    FAULTS,  # noqa: E402
    READ_TIMEOUT_S,
    REQUESTS,
    Counts,
    run_case,
)

NAMES = {"nginx": "nginx", "haproxy": "HAProxy", "envoy": "Envoy", "daemon": "gridctl daemon"}
ALL_PLANES = (*DATA_PLANES, "daemon")  # the daemon beside the data planes it renders for


def versions(planes: list[str]) -> str:
    found = []
    for plane in planes:
        if plane == "nginx":
            text = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
            found.append(f"nginx {text.rsplit('/', 1)[-1]}")  # nginx version: nginx/1.22.1
        elif plane == "haproxy":
            text = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split()
            found.append(f"HAProxy {text[2]}")
        elif plane == "daemon":
            from gridctl import __version__

            found.append(f"gridctl {__version__}")
        else:
            text = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True).stdout
            match = re.search(r"version: \w+/(\d+\.\d+\.\d+)/", text)  # <path>  version: <sha>/1.40.0/...
            found.append(f"Envoy {match.group(1) if match else '?'}")
    return ", ".join(found)


def row(c: Counts) -> str:
    mode = "stream" if c.stream else "whole"
    return (
        f"| {c.fault} | {mode} | {c.sent} | {c.answered_text()} | {c.lost} | {c.duplicated} | "
        f"{c.tries} | {c.seconds:.2f} |"
    )


LONG_KB = 100  # a long chat: past HAProxy's own 16 kB buffer, within the rendered 128 kB
LONG_FAULTS = ("503-one", "503-all", "hang")  # what a data plane learns only from an answer


def long_chats(planes: list[str], requests: int, kb: int) -> str:
    """The faults that need a request sent again after an answer, with a long message: the
    table of each data plane, and HAProxy once more with its own default buffer (16 kB)."""
    header = "| data plane | fault | sent | answered by | lost | duplicated | tries |"
    rule = "|---|---|---:|---|---:|---:|---:|"
    print(f"\nlong chats ({kb} kB message, not streamed)\n{header}\n{rule}")
    lines = [header, rule]
    runs = [(plane, NAMES[plane], {}) for plane in planes]
    if "haproxy" in planes:
        runs.append(("haproxy", "HAProxy, --haproxy-buffer-kb 16", {"haproxy_buffer_kb": 16}))
    for plane, name, render in runs:
        for fault in LONG_FAULTS:
            c = run_case(plane, fault, False, requests, prompt="x" * (kb * 1024), **render)
            line = f"| {name} | {fault} | {c.sent} | {c.answered_text()} | {c.lost} | {c.duplicated} | {c.tries} |"
            print(line, flush=True)
            lines.append(line)
    return (
        f"### Long chats: a {kb} kB message\n\nThe faults a data plane learns of only from an answer "
        "(a 503, a hang), so that it must send the request again, with one message of "
        f"{kb} kB (`--long-kb`), not streamed. HAProxy sends a request again only if it fits in "
        "its buffer: 128 kB as rendered (`route render --haproxy-buffer-kb`), 16 kB by its own "
        "default (last rows).\n\n" + "\n".join(lines) + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=REQUESTS, help="requests per case")
    p.add_argument(
        "--planes", default=",".join(ALL_PLANES), help="comma-separated: nginx, haproxy, envoy, daemon"
    )
    p.add_argument("--long-kb", type=int, default=LONG_KB, help="the long chats' message, kB (second table)")
    p.add_argument("--write-readme", action="store_true")
    args = p.parse_args(argv)
    planes = [x for x in args.planes.split(",") if x]
    machine = describe_machine()
    print(machine)
    print(versions(planes))
    header = "| fault | mode | sent | answered by | lost | duplicated | tries | seconds |"
    rule = "|---|---|---:|---|---:|---:|---:|---:|"
    sections: list[str] = []
    totals: list[str] = []
    for plane in planes:
        lines = [header, rule]
        print(f"\n{NAMES[plane]}\n{header}\n{rule}")
        lost = duplicated = 0
        for fault in FAULTS:
            for stream in (False, True):
                counts = run_case(plane, fault, stream, args.requests)
                lost, duplicated = lost + counts.lost, duplicated + counts.duplicated
                print(row(counts), flush=True)
                lines.append(row(counts))
        total = f"{NAMES[plane]}: {lost} lost, {duplicated} duplicated in {len(FAULTS) * 2} cases"
        print(total)
        totals.append(total)
        sections.append(f"### {NAMES[plane]}\n\n" + "\n".join(lines) + f"\n\n{total}.\n")
    sections.append(long_chats(planes, args.requests, args.long_kb))
    if args.write_readme:
        cmd = "python bench/dataplane_faults.py --write-readme"
        body = (
            "## Data planes under faults: nginx, HAProxy, Envoy, beside gridctl's daemon\n\n"
            f"{machine}; {versions(planes)}. Command: `{cmd}`. Lab-east's llama route (primaries "
            "east-1 weight 75 and east-2 weight 25, backups west-1 and west-2; stand-in sites on "
            f"loopback), one fault at a time on east-1 (on both primaries for 503-all), {args.requests} "
            "requests one after another per case, each case on a fresh grid and data plane rendered "
            f"by `route render --read-timeout {READ_TIMEOUT_S}`. lost: not a whole 200; duplicated: "
            "answered by two sites; tries: requests the sites received beyond one per request "
            "(failovers the client did not see); seconds: the case's wall time on a shared machine "
            "(an indication, no target). The same cases are asserted by tests/routing/test_faults_*.py. "
            "The daemon runs on the same inventory with lab-east as its clients' region and ranks the "
            "sites by its own prediction (not the table's weights): it is held to lost = duplicated = 0, "
            "not to the table's order of who answers.\n\n" + "\n".join(sections) + "\n"
        )
        write_readme({"dataplane-faults": body})
        print("wrote bench/README.md: dataplane-faults")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
