"""Read a request trace (JSON Lines) into a :class:`Workload`.

One JSON object per line (blank lines are skipped)::

    {"t": 0.125, "region": "us-east", "model": "llama-3.1-8b-instruct",
     "prompt_tokens": 512, "output_tokens": 24, "prefix": "agent-7", "prefix_tokens": 400,
     "session": "call-1234"}

- ``t``: seconds from the start of the trace (any order; sorted on reading);
- ``region``: a client region of grid.yaml;
- ``model``: optional, default the run's model;
- ``prompt_tokens`` (>= 1), ``output_tokens`` (>= 1);
- ``prefix`` (text or integer) and ``prefix_tokens`` go together: requests with
  the same prefix share their first ``prefix_tokens`` prompt tokens;
- ``max_tokens`` (>= 1), optional: what the client asked for, the size placement predicts
  with (never ``output_tokens``, the answer's true length, which placement does not see);
  without it, placement predicts at the 90th percentile of the answers it has seen, as the
  daemon does for a request without ``max_tokens``;
- ``session`` (text or integer), optional: a request continues the session's
  previous request (by ``t``), whose prompt and output lead its own prompt when
  they fit in it;
- ``id`` and keys starting with ``x_`` are free annotations, ignored.

Any other key is an error. Problems are reported as ``file:line: key: message``.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gridctl.core.errors import UsageError
from gridctl.sim.traffic import Workload

KEYS = (
    "t",
    "region",
    "model",
    "prompt_tokens",
    "output_tokens",
    "max_tokens",
    "prefix",
    "prefix_tokens",
    "session",
    "id",
)
MAX_PROBLEMS = 20
MAX_T_S = 366 * 86400.0  # a year of traffic: a later t is a unit mistake, not a trace


class TraceError(UsageError):
    """A trace file is invalid (exit 2). The message is the first problem, ``file:line: ...``."""

    def __init__(self, problems: list[str]) -> None:
        more = len(problems) - 1
        listed = "; ".join(problems[1:6])
        hint = (
            f"{more} more problem{'s' if more != 1 else ''}: {listed}{' ...' if more > 5 else ''}"
            if more
            else "the trace format is in the README (gridctl sim --trace)"
        )
        super().__init__(problems[0], hint=hint)
        self.problems = problems


def _tokens(obj: Mapping[str, Any], key: str, where: str, problems: list[str], lo: int = 1) -> int:
    value = obj.get(key)
    if value is None:
        problems.append(f"{where}: {key}: missing (required)")
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        problems.append(f"{where}: {key}: must be an integer >= {lo} (got {json.dumps(value)})")
        return 0
    return value


def _ident(value: Any, key: str, where: str, problems: list[str]) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        problems.append(f"{where}: {key}: must be a text or an integer id (got {json.dumps(value)})")
        return None
    return str(value)


# one request read: (t, line, region, model, prompt, output, prefix, prefix_tokens, session, max_tokens)
_Row = tuple[float, int, int, int, int, int, int, int, int, int]


@dataclass(frozen=True)
class _Request:
    """One valid line of a trace, its ids still names."""

    t: float
    region: str
    model: str
    prompt: int
    output: int
    prefix: str | None
    prefix_tokens: int
    session: str | None
    max_tokens: int


def parse_trace(
    lines: Iterable[str],
    file: str,
    regions: Mapping[str, object],
    default_model: str,
    slo_ms: float,
    duration_s: float | None = None,
) -> Workload:
    """Trace lines -> a workload of every request before ``duration_s`` (all when None); raise
    TraceError with every located problem (up to MAX_PROBLEMS)."""
    problems: list[str] = []
    region_ix: dict[str, int] = {}
    model_ix: dict[str, int] = {default_model: 0}
    prefix_ix: dict[str, int] = {}
    session_ix: dict[str, int] = {}
    rows: list[_Row] = []
    seen = 0
    for lineno, line in enumerate(lines, 1):
        if len(problems) >= MAX_PROBLEMS:
            break
        if not line.strip():
            continue
        seen += 1
        req = _parse_line(line, f"{file}:{lineno}", regions, default_model, problems)
        if req is None or (duration_s is not None and req.t >= duration_s):
            continue
        ri = region_ix.setdefault(req.region, len(region_ix))
        mi = model_ix.setdefault(req.model, len(model_ix))
        pi = prefix_ix.setdefault(req.prefix, len(prefix_ix)) if req.prefix is not None else -1
        si = session_ix.setdefault(req.session, len(session_ix)) if req.session is not None else -1
        rows.append(
            (req.t, lineno, ri, mi, req.prompt, req.output, pi, req.prefix_tokens, si, req.max_tokens)
        )
    if problems:
        raise TraceError(problems)
    if not rows:
        raise TraceError([f"{file}: no requests" + (f" before {duration_s:g} s" if seen else "")])
    rows.sort()  # by time, then line
    names = tuple(r for r in regions if r in region_ix)  # grid.yaml's order
    remap = [names.index(r) for r in sorted(region_ix, key=region_ix.__getitem__)]
    models = tuple(sorted(model_ix, key=model_ix.__getitem__))
    end = duration_s if duration_s is not None else rows[-1][0] + 1e-3
    return _build_workload(rows, Workload(names, models, end, slo_ms), remap)


def _parse_line(
    line: str, where: str, regions: Mapping[str, object], default_model: str, problems: list[str]
) -> _Request | None:
    """One line -> its request; None (its problems appended) when it is not a valid one."""
    try:
        obj = json.loads(line)
    except ValueError as exc:
        problems.append(f"{where}: not JSON: {exc.args[0] if exc.args else exc}")
        return None
    if not isinstance(obj, dict):
        problems.append(f"{where}: must be a JSON object, one request per line")
        return None
    before = len(problems)
    _check_keys(obj, where, problems)
    t = _time(obj, where, problems)
    region = _region(obj, where, regions, problems)
    model = obj.get("model", default_model)
    if not isinstance(model, str) or not model:
        problems.append(f"{where}: model: must be a model name (got {json.dumps(model)})")
    prompt = _tokens(obj, "prompt_tokens", where, problems)
    output = _tokens(obj, "output_tokens", where, problems)
    prefix, ptoks = _prefix(obj, where, prompt, problems)
    session = _ident(obj["session"], "session", where, problems) if "session" in obj else None
    asked = _tokens(obj, "max_tokens", where, problems) if "max_tokens" in obj else 0
    if asked and output > asked:
        problems.append(f"{where}: output_tokens: more than the max_tokens asked ({output} > {asked})")
    if len(problems) > before:
        return None
    assert t is not None and region is not None and isinstance(model, str)
    return _Request(t, region, model, prompt, output, prefix, ptoks, session, asked)


def _check_keys(obj: Mapping[str, Any], where: str, problems: list[str]) -> None:
    for key in obj:
        if key not in KEYS and not key.startswith("x_"):
            near = difflib.get_close_matches(key, KEYS, n=1, cutoff=0.6)
            problems.append(
                f"{where}: {key}: unknown key; "
                + (f"did you mean '{near[0]}'?" if near else f"expected: {', '.join(KEYS)}")
            )


def _time(obj: Mapping[str, Any], where: str, problems: list[str]) -> float | None:
    t = obj.get("t")
    if t is None:
        problems.append(f"{where}: t: missing (required): seconds from the start of the trace")
    elif (
        isinstance(t, bool)
        or not isinstance(t, (int, float))
        or not math.isfinite(t)
        or not 0 <= t <= MAX_T_S
    ):
        problems.append(f"{where}: t: must be seconds from 0 to {MAX_T_S:g} (got {json.dumps(t)})")
    else:
        return float(t)
    return None


def _region(
    obj: Mapping[str, Any], where: str, regions: Mapping[str, object], problems: list[str]
) -> str | None:
    region = obj.get("region")
    if not isinstance(region, str):
        problems.append(f"{where}: region: must be a client region name (got {json.dumps(region)})")
    elif region not in regions:
        near = difflib.get_close_matches(region, list(regions), n=1)
        problems.append(
            f"{where}: region: no client region named {region!r} in grid.yaml"
            + (f"; did you mean {near[0]!r}?" if near else f" (regions: {', '.join(regions)})")
        )
    else:
        return region
    return None


def _prefix(obj: Mapping[str, Any], where: str, prompt: int, problems: list[str]) -> tuple[str | None, int]:
    """The request's shared prefix and its tokens; (None, 0) without one."""
    prefix, ptoks = None, 0
    if "prefix" in obj or "prefix_tokens" in obj:
        if "prefix" not in obj or "prefix_tokens" not in obj:
            problems.append(f"{where}: prefix: 'prefix' and 'prefix_tokens' go together")
        else:
            prefix = _ident(obj["prefix"], "prefix", where, problems)
            ptoks = _tokens(obj, "prefix_tokens", where, problems, lo=0)
            if prompt and ptoks > prompt:
                problems.append(f"{where}: prefix_tokens: must not exceed prompt_tokens ({ptoks} > {prompt})")
    return prefix, ptoks


def _build_workload(rows: list[_Row], w: Workload, remap: list[int]) -> Workload:
    """``w`` filled with the sorted ``rows``, each session's history from its previous request."""
    last: dict[int, int] = {}  # session -> its previous request's prompt + output
    if any(r[9] for r in rows):
        w.max_tokens = []
    for t, _, ri, mi, prompt, output, pi, ptoks, si, asked in rows:
        hist = 0
        if si >= 0:
            prev = last.get(si, 0)
            hist = prev if prev <= prompt else 0
            last[si] = prompt + output
        w.t.append(t)
        w.region.append(remap[ri])
        w.model.append(mi)
        w.prompt.append(prompt)
        w.output.append(output)
        w.prefix.append(pi)
        w.prefix_tokens.append(ptoks)
        w.session.append(si)
        w.history.append(hist)
        if w.max_tokens is not None:
            w.max_tokens.append(asked)
    return w


def load_trace(
    path: Path, regions: Mapping[str, object], default_model: str, slo_ms: float, duration_s: float | None
) -> Workload:
    try:
        with open(path, encoding="utf-8") as fh:
            return parse_trace(fh, str(path), regions, default_model, slo_ms, duration_s)
    except FileNotFoundError:
        raise UsageError(f"--trace {path}: no such file", hint="give the path of a JSONL trace") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except IsADirectoryError:
        raise UsageError(f"--trace {path}: is a directory, not a JSONL file") from None
    except OSError as exc:
        raise UsageError(f"--trace {path}: cannot read: {exc.strerror or exc}") from None
