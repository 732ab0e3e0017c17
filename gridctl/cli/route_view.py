"""How ``route test`` shows a decision: the ranked sites' columns (and the wide ones), the
excluded sites with their reasons, the live answer, and the verdict's exit code."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gridctl.core.errors import ExitCode, QuietExit, UnreachableError
from gridctl.output import Column, Streams, render_table

if TYPE_CHECKING:
    from gridctl.core.placement.decision import Decision


def _money(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ms(key: str) -> Column:
    return Column(key.upper().replace("_", "-"), lambda r: f"{r[key]:.1f}")


def _slo_column(budget_ms: float) -> Column:
    def verdict(r: Mapping[str, Any]) -> str:
        return "meets" if r["feasible"] else f"misses (+{r['predicted_ms'] - budget_ms:.0f} ms)"

    return Column("SLO", verdict, lambda v: None if v == "meets" else "yellow")


def ranked_columns(budget_ms: float) -> tuple[list[Column], list[Column]]:
    table = [
        Column("RANK", lambda r: r["rank"]),
        Column("SITE", lambda r: r["site"]),
        Column("GPU", lambda r: r["gpu"]),
        Column("REPLICAS", lambda r: r["replicas"]),
        _ms("rtt_ms"),
        _ms("queue_ms"),
        _ms("prefill_ms"),
        _ms("decode_ms"),
        Column("E2E-MS", lambda r: f"{r['predicted_ms']:.1f}"),
        _slo_column(budget_ms),
        Column(
            "COST/1K-TOK",
            lambda r: "-" if r["cost_per_1k_tokens"] is None else f"{r['cost_per_1k_tokens']:.3g}",
        ),
    ]
    wide = [
        Column("KIND", lambda r: r["kind"]),
        Column("JURIS", lambda r: r["jurisdiction"]),
        Column("FROM", lambda r: r["latency_source"]),
        _ms("ttft_ms"),
        Column("TP", lambda r: r["tensor_parallel"]),
        Column("LOAD", lambda r: f"{r['load']['running']}+{r['load']['waiting']}/{r['load']['capacity']}"),
        Column("CACHED", lambda r: r["cached_tokens"]),
        Column(
            "CAL",
            lambda r: f"{r['calibration']['first_factor']:.2f}/{r['calibration']['decode_factor']:.2f}",
        ),
        Column("COST/REQ", lambda r: _money(r["cost_per_request"], 6)),
    ]
    return table, wide


EXCLUDED = [
    Column("EXCLUDED", lambda r: r["site"]),
    Column("REASONS", lambda r: "; ".join(r["reasons"])),
]


def verdict(streams: Streams, decision: Decision, result: Mapping[str, Any]) -> None:
    """After the explanation: exit 4 when no site is eligible, 1 when the live request
    failed, 3 (with a warning) when the best site is expected to miss the SLO."""
    req = decision.request
    if not result["ranked"]:
        raise UnreachableError(
            f"no eligible site for {req.model} from {req.region}",
            hint="every site's reasons are listed above; relax --slo-ms, undrain a site, or add capacity",
        )
    if result["live"] and not result["live"]["ok"]:
        raise QuietExit(ExitCode.ERROR)
    best = decision.best
    if best is not None and not best.feasible:
        streams.warn(
            f"no site is predicted to meet the {decision.slo_ms:g} ms SLO (budget {decision.budget_ms:g} ms) "
            f"for this request: it would go to the fastest, {best.site}, predicted "
            f"{best.prediction.e2e_ms:.0f} ms, and is expected to miss"
        )
        raise QuietExit(ExitCode.UNHEALTHY)


def explanation(
    result: Mapping[str, Any], decision: Decision, jurisdiction: str | None, wide: bool, streams: Streams
) -> str:
    """``route test``'s human view: the request and its budget, the ranked sites, the
    excluded ones with their reasons, the live answer."""
    ranked, excluded, req = result["ranked"], result["excluded"], result["request"]
    jur = f", data kept in {jurisdiction}" if jurisdiction else ""
    text = (
        f"{decision.request.region} -> {decision.request.model} (SLO {decision.slo_ms:g} ms{jur}): "
        f"{len(ranked)} eligible, {decision.feasible} predicted within the SLO\n"
        f"request: {req['prompt_tokens']} prompt tokens, {req['max_tokens']} output tokens "
        f"({req['output_tokens_from']}); budget {decision.budget_ms:g} ms (the SLO less its "
        f"{result['slo_margin']:.0%} margin)\n"
    )
    if ranked:
        text += (
            "e2e = rtt + queue + prefill + decode; within the SLO cheapest first, then the others "
            "fastest first\n"
        )
        columns, wide_columns = ranked_columns(decision.budget_ms)
        text += render_table(ranked, [*columns, *wide_columns] if wide else columns, streams)
    if excluded:
        text += "\n" + render_table(excluded, EXCLUDED, streams)
    lv = result["live"]
    if lv and lv["ok"]:
        text += (
            f"\nlive: {lv['site']} answered, TTFT {lv['ttft_ms']:.1f} ms, "
            f"total {lv['total_ms']:.1f} ms: {lv['text']!r}\n"
        )
    elif lv:
        text += f"\nlive: {lv['site']} FAILED: {lv['error']}\n"
    return text
