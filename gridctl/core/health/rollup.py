"""A site's health from its endpoint's and its nodes' verdicts. Pure."""

from __future__ import annotations

from collections.abc import Sequence

from gridctl.core.health.model import Status


def rollup_site(endpoint: Status | None, nodes: Sequence[Status]) -> tuple[Status, str]:
    """(status, why) for the site as a whole.

    The endpoint decides whether the site serves at all: unreachable or failed
    there is the site's status. Nodes reduce it: all nodes failed or unreachable
    fails the site; some of them, or any degraded or unknown node, degrades it.
    """
    if endpoint in (Status.UNREACHABLE, Status.FAILED):
        return endpoint, f"endpoint {endpoint.value}"
    bad = [s for s in nodes if s in (Status.FAILED, Status.UNREACHABLE)]
    if nodes and len(bad) == len(nodes):
        return Status.FAILED, f"all {len(nodes)} nodes failed or unreachable"
    if bad:
        return Status.DEGRADED, f"{len(bad)} of {len(nodes)} nodes failed or unreachable"
    shaky = [s for s in nodes if s in (Status.DEGRADED, Status.UNKNOWN)]
    if shaky:
        return Status.DEGRADED, f"{len(shaky)} of {len(nodes)} nodes degraded or unknown"
    if endpoint is None:
        return (Status.OK, "nodes ok; endpoint not checked") if nodes else (Status.UNKNOWN, "nothing checked")
    return endpoint, f"endpoint {endpoint.value}" + (f", {len(nodes)} nodes ok" if nodes else "")
