"""Traffic profiles: the built-in ones, and scenario files that refine them.

A profile says how much traffic comes from where, in what shape: a base rate
per client region (requests per second, every turn of every session counted),
bursts that multiply the rate at which new sessions start, the length of
prompts and outputs, shared prefixes (system prompts, documents) and sessions
(multi-turn conversations whose next turn starts with the whole previous one).

A scenario file (YAML, ``<inventory>/scenarios/<name>.yaml``, or any path)
starts from a built-in profile (``base``, default: the file's name when it is
a built-in one) and overrides what it names; it may also name the central site
and the sites the service is deployed on, and add sites of its own
(``add_sites``: site documents in the inventory's schema, which exist only in
the runs of that scenario: a what-if deployment without touching the inventory).
Every key is optional; unknown keys are errors, located as ``file:line``. The README documents the keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gridctl.core.errors import InventoryError, Problem
from gridctl.core.inventory.checks import DNS_LABEL, Checker
from gridctl.core.inventory.model import Site, SshDefaults
from gridctl.core.inventory.site_schema import build_site
from gridctl.core.inventory.yamldoc import DocumentError, parse_document, path_str

MAX_RATE = 1_000_000.0
MAX_DURATION_S = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Lengths:
    """Token counts drawn from a log-normal: ``median``, ``sigma`` (of the log), clipped to [lo, hi]."""

    median: float
    sigma: float
    lo: int
    hi: int


@dataclass(frozen=True)
class Bursts:
    """Every ``every_s`` seconds from ``first_s``, for ``length_s``, new sessions start ``factor`` times
    as often."""

    every_s: float
    length_s: float
    factor: float
    first_s: float = 0.0


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    slo_ms: float
    duration_s: float
    rate_per_region: float  # requests/s from each region of the grid, when ``rates`` is None
    bursts: Bursts | None
    prefix_tokens: int  # leading tokens shared by every request of a prefix (system prompt, document)
    prefixes: int  # distinct shared prefixes; which one a session uses is Zipf-distributed
    prefix_skew: float  # the Zipf exponent (0: uniform)
    new_tokens: Lengths  # prompt tokens of a turn beyond the prefix and the session's history
    output_tokens: Lengths
    turns: float  # mean turns per session (geometric); 1: every request is alone
    think_s: float  # mean seconds between a session's turns (exponential)
    model: str | None = None  # None: the model most sites serve
    rates: Mapping[str, float] | None = field(default=None, hash=False)  # region -> requests/s
    burst_regions: tuple[str, ...] | None = None  # None: every region bursts
    max_prompt_tokens: int = 8192  # a session whose prompt would grow beyond starts a new context
    queue_per_slot: float = 1.0  # waiting requests a site holds per slot before it answers 429
    central: str | None = None  # the central site of the `central` policy
    sites: str | None = None  # target pattern: the sites the service is deployed on (None: all)
    source: str = "built-in"
    add_sites: tuple[Site, ...] = ()  # sites only this scenario's runs have
    # clients send the largest output as max_tokens (voice agents bound a spoken answer); else
    # they send none, and placement predicts each answer at the 90th percentile it has seen
    clients_set_max_tokens: bool = True


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="voice-burst",
            description="voice agents: short turns, 500 ms end to end, bursts of new calls at 4x the base",
            slo_ms=500.0,
            duration_s=120.0,
            rate_per_region=40.0,
            bursts=Bursts(every_s=60.0, length_s=15.0, factor=4.0, first_s=20.0),
            prefix_tokens=400,
            prefixes=16,
            prefix_skew=1.0,
            new_tokens=Lengths(30, 0.5, 4, 200),
            output_tokens=Lengths(20, 0.4, 4, 48),
            turns=4.0,
            think_s=6.0,
        ),
        Profile(
            name="chat",
            description="chat assistants: long answers, multi-turn sessions, mild bursts (2x)",
            slo_ms=10_000.0,
            duration_s=300.0,
            rate_per_region=10.0,
            bursts=Bursts(every_s=120.0, length_s=30.0, factor=2.0, first_s=60.0),
            prefix_tokens=300,
            prefixes=8,
            prefix_skew=1.0,
            new_tokens=Lengths(80, 0.8, 4, 2000),
            output_tokens=Lengths(250, 0.7, 8, 2000),
            turns=6.0,
            think_s=20.0,
            clients_set_max_tokens=False,
        ),
        Profile(
            name="rag",
            description="retrieval-augmented answers: long prompts over shared documents, mild bursts (2.5x)",
            slo_ms=5000.0,
            duration_s=300.0,
            rate_per_region=8.0,
            bursts=Bursts(every_s=90.0, length_s=20.0, factor=2.5, first_s=30.0),
            prefix_tokens=2000,
            prefixes=200,
            prefix_skew=1.1,
            new_tokens=Lengths(150, 0.6, 10, 2000),
            output_tokens=Lengths(120, 0.6, 8, 1000),
            turns=1.5,
            think_s=30.0,
            clients_set_max_tokens=False,
        ),
    )
}

# -- scenario files --------------------------------------------------------------------------------

SCENARIO_DIR = "scenarios"
SCENARIO_KEYS = {
    "base": False,
    "description": False,
    "model": False,
    "slo_ms": False,
    "duration_s": False,
    "central": False,
    "sites": False,
    "regions": False,
    "rate_per_region": False,
    "bursts": False,
    "prefix": False,
    "new_tokens": False,
    "output_tokens": False,
    "sessions": False,
    "queue_per_slot": False,
    "max_prompt_tokens": False,
    "add_sites": False,
    "clients_set_max_tokens": False,
}
BURST_KEYS = {"every_s": True, "length_s": True, "factor": True, "first_s": False, "regions": False}
PREFIX_KEYS = {"tokens": False, "count": False, "skew": False}
LENGTH_KEYS = {"median": True, "sigma": False, "min": False, "max": False}
SESSION_KEYS = {"turns": False, "think_s": False}
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$")


class ScenarioError(InventoryError):
    """A scenario file is invalid: every problem, each as ``file:line: path: message`` (exit 5)."""

    def __init__(self, problems: list[Problem], file: str) -> None:
        super().__init__(
            problems, file, hint="fix the lines above; the README's `gridctl sim` section lists the keys"
        )
        n = len(self.problems)
        self.message = f"scenario {file} is invalid ({n} problem{'s' if n != 1 else ''})"


def build_profile(
    doc: Any, stem: str
) -> tuple[Profile | None, list[tuple[tuple[str | int, ...], str, bool]]]:
    """A scenario document -> the profile it describes (None when invalid) and its issues
    ``(path, message, at_key)``. Pure: references to the inventory are checked by ``check_profile``."""
    ck = Checker()
    top = ck.want_mapping(doc if doc is not None else {}, (), SCENARIO_KEYS)
    p = _base(ck, top, stem) if top is not None else None
    if top is None or p is None:
        return None, [(i.path, i.message, i.at_key) for i in ck.issues]
    changes: dict[str, Any] = {"name": stem}
    changes.update(_scalars(ck, top))
    changes.update(_placement(ck, top))
    if "bursts" in top:
        changes["bursts"], changes["burst_regions"] = _bursts(ck, top["bursts"])
    if "prefix" in top:
        changes.update(_prefix(ck, top["prefix"]))
    for key in ("new_tokens", "output_tokens"):
        if key in top:
            changes[key] = _lengths(ck, top[key], (key,), getattr(p, key))
    if "sessions" in top:
        changes.update(_sessions(ck, top["sessions"]))
    issues = [(i.path, i.message, i.at_key) for i in ck.issues]
    if issues or any(
        v is None and k not in ("model", "rates", "central", "sites", "bursts", "burst_regions", "add_sites")
        for k, v in changes.items()
    ):
        return None, issues
    return replace(p, **changes), issues


def _base(ck: Checker, top: Mapping[str, Any], stem: str) -> Profile | None:
    """The built-in profile the scenario starts from: ``base``, else the file's name."""
    base_name = top.get("base", stem if stem in PROFILES else None)
    if base_name is None:
        ck.fail(("base",), f"missing: name the built-in profile this starts from ({', '.join(PROFILES)})")
        return None
    if base_name not in PROFILES:
        ck.fail(("base",), f"unknown profile {base_name!r}; built-in: {', '.join(PROFILES)}")
        return None
    return PROFILES[base_name]


def _scalars(ck: Checker, top: Mapping[str, Any]) -> dict[str, Any]:
    """The profile's single values the scenario overrides: description, model, SLO, duration,
    rates, queue bound, prompt bound."""
    changes: dict[str, Any] = {}
    if "description" in top:
        if isinstance(top["description"], str):
            changes["description"] = top["description"].strip()
        else:
            ck.fail(("description",), "must be text")
    if "model" in top:
        changes["model"] = ck.want_str(top["model"], ("model",), MODEL_NAME, "a model name")
    for key, lo, hi, what in (
        ("slo_ms", 1.0, 600_000.0, "milliseconds"),
        ("duration_s", 0.001, MAX_DURATION_S, "seconds"),
        ("rate_per_region", 0.0, MAX_RATE, "requests per second"),
        ("queue_per_slot", 0.0, 1000.0, "waiting requests per slot"),
    ):
        if key in top:
            changes[key] = ck.want_number(top[key], (key,), lo, hi, what)
    if "max_prompt_tokens" in top:
        changes["max_prompt_tokens"] = ck.want_int(
            top["max_prompt_tokens"], ("max_prompt_tokens",), 16, 10_000_000, "a token count"
        )
    return changes


def _placement(ck: Checker, top: Mapping[str, Any]) -> dict[str, Any]:
    """Where the traffic goes and comes from: the central site, the sites deployed, the sites
    added, whether clients set max_tokens, the per-region rates."""
    changes: dict[str, Any] = {}
    if "central" in top:
        changes["central"] = ck.want_name(top["central"], ("central",))
    if "sites" in top:
        if isinstance(top["sites"], str) and top["sites"].strip():
            changes["sites"] = top["sites"].strip()
        else:
            ck.fail(("sites",), "must be a target pattern such as 'kind:regional-pop,chi-co-07'")
    if "add_sites" in top:
        changes["add_sites"] = _add_sites(ck, top["add_sites"])
    if "clients_set_max_tokens" in top:
        changes["clients_set_max_tokens"] = ck.want_bool(
            top["clients_set_max_tokens"], ("clients_set_max_tokens",)
        )
    if "regions" in top:
        changes["rates"] = _rates(ck, top["regions"])
    return changes


def _prefix(ck: Checker, value: Any) -> dict[str, Any]:
    """The shared prefixes: their tokens, how many, their Zipf skew."""
    changes: dict[str, Any] = {}
    m = ck.want_mapping(value, ("prefix",), PREFIX_KEYS)
    if m is None:
        return changes
    if "tokens" in m:
        changes["prefix_tokens"] = ck.want_int(
            m["tokens"], ("prefix", "tokens"), 0, 1_000_000, "a token count"
        )
    if "count" in m:
        changes["prefixes"] = ck.want_int(m["count"], ("prefix", "count"), 1, 10_000_000, "a count")
    if "skew" in m:
        changes["prefix_skew"] = ck.want_number(m["skew"], ("prefix", "skew"), 0.0, 10.0, "a Zipf exponent")
    return changes


def _sessions(ck: Checker, value: Any) -> dict[str, Any]:
    """The sessions: mean turns, and the think time between them."""
    changes: dict[str, Any] = {}
    s = ck.want_mapping(value, ("sessions",), SESSION_KEYS)
    if s is None:
        return changes
    if "turns" in s:
        changes["turns"] = ck.want_number(s["turns"], ("sessions", "turns"), 1.0, 10_000.0, "mean turns")
    if "think_s" in s:
        changes["think_s"] = ck.want_number(s["think_s"], ("sessions", "think_s"), 0.0, 86_400.0, "seconds")
    return changes


def _add_sites(ck: Checker, value: Any) -> tuple[Site, ...]:
    items = ck.want_list(value, ("add_sites",))
    out: list[Site] = []
    for i, doc in enumerate(items or ()):
        site, issues = build_site(doc, SshDefaults())
        for issue in issues:
            ck.fail(("add_sites", i, *issue.path), issue.message, issue.at_key)
        if site is not None:
            out.append(site)
        elif not issues:
            ck.fail(
                ("add_sites", i), "not a usable site (name, kind, region, jurisdiction, location, endpoint)"
            )
    names = [s.name for s in out]
    for i, name in enumerate(names):
        if name in names[:i]:
            ck.fail(("add_sites", i, "name"), f"site {name!r} added twice")
    return tuple(out)


def _rates(ck: Checker, value: Any) -> dict[str, float] | None:
    if not isinstance(value, dict) or not value:
        ck.fail(
            ("regions",), "must be a mapping of client region -> requests per second, e.g. {us-east: 120}"
        )
        return None
    out: dict[str, float] = {}
    for name, rate in value.items():
        if not isinstance(name, str) or not DNS_LABEL.match(name):
            ck.fail(("regions", str(name)), "must be a client region name", at_key=True)
            continue
        r = ck.want_number(rate, ("regions", name), 0.0, MAX_RATE, "requests per second")
        if r is not None:
            out[name] = r
    return out


def _bursts(ck: Checker, value: Any) -> tuple[Bursts | None, tuple[str, ...] | None]:
    if value is None or value is False:
        return None, None
    m = ck.want_mapping(value, ("bursts",), BURST_KEYS)
    if m is None:
        return None, None
    every = ck.want_number(m.get("every_s"), ("bursts", "every_s"), 0.001, MAX_DURATION_S, "seconds")
    length = ck.want_number(m.get("length_s"), ("bursts", "length_s"), 0.0, MAX_DURATION_S, "seconds")
    factor = ck.want_number(m.get("factor"), ("bursts", "factor"), 0.0, 1000.0, "a rate multiplier")
    first = ck.want_number(m.get("first_s", 0.0), ("bursts", "first_s"), 0.0, MAX_DURATION_S, "seconds")
    regions: tuple[str, ...] | None = None
    if "regions" in m:
        items = ck.want_list(m["regions"], ("bursts", "regions"))
        if items is not None:
            names = [ck.want_name(r, ("bursts", "regions", i)) for i, r in enumerate(items)]
            regions = tuple(n for n in names if n is not None)
    if every is None or length is None or factor is None or first is None:
        return None, None
    if length > every:
        ck.fail(("bursts", "length_s"), f"must not exceed every_s ({every:g})")
    return Bursts(every, length, factor, first), regions


def _lengths(ck: Checker, value: Any, path: tuple[str, ...], default: Lengths) -> Lengths | None:
    m = ck.want_mapping(value, path, LENGTH_KEYS)
    if m is None:
        return None
    median = ck.want_number(m.get("median"), (*path, "median"), 1.0, 10_000_000.0, "a token count")
    sigma = ck.want_number(m.get("sigma", default.sigma), (*path, "sigma"), 0.0, 5.0, "a log-normal sigma")
    lo = ck.want_int(m.get("min", 1), (*path, "min"), 1, 10_000_000, "a token count")
    hi = ck.want_int(
        m.get("max", max(default.hi, int(median or 1) * 10)), (*path, "max"), 1, 10_000_000, "a token count"
    )
    if median is None or sigma is None or lo is None or hi is None:
        return None
    if lo > hi:
        ck.fail((*path, "min"), f"must not exceed max ({hi})")
        return None
    return Lengths(median, sigma, lo, hi)


def check_profile(
    profile: Profile, regions: Mapping[str, object], sites: Mapping[str, object]
) -> list[tuple[tuple[str | int, ...], str]]:
    """References from a profile to the inventory: region and site names."""
    import difflib

    out: list[tuple[tuple[str | int, ...], str]] = []

    def unknown(kind: str, name: str, pool: Mapping[str, object]) -> str:
        near = difflib.get_close_matches(name, list(pool), n=1)
        return f"no {kind} named {name!r}" + (f"; did you mean {near[0]!r}?" if near else "")

    for name in profile.rates or {}:
        if name not in regions:
            out.append((("regions", name), unknown("client region", name, regions)))
    for i, name in enumerate(profile.burst_regions or ()):
        if name not in regions:
            out.append((("bursts", "regions", i), unknown("client region", name, regions)))
    added = {s.name: s for s in profile.add_sites}
    for i, site in enumerate(profile.add_sites):
        if site.name in sites:
            out.append((("add_sites", i, "name"), f"site {site.name!r} is already in the inventory"))
        if site.region not in regions:
            out.append((("add_sites", i, "region"), unknown("client region", site.region, regions)))
    if profile.central is not None and profile.central not in sites and profile.central not in added:
        out.append((("central",), unknown("site", profile.central, {**sites, **added})))
    return out


def load_scenario(
    path: Path, root: Path, regions: Mapping[str, object], sites: Mapping[str, object]
) -> Profile:
    """Read and check a scenario file; raise ScenarioError with every located problem."""
    try:
        rel = str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        rel = str(path)
    from gridctl.inventory.files import read_bounded_text

    try:
        text = read_bounded_text(path)
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise ScenarioError([Problem(rel, 0, "", f"cannot read: {why}")], rel) from None
    stem = path.name.rsplit(".", 1)[0]
    try:
        doc = parse_document(text)
    except DocumentError as exc:
        raise ScenarioError([Problem(rel, exc.line, "", exc.message)], rel) from None
    profile, issues = build_profile(doc.value, stem)
    problems = [Problem(rel, doc.line_of(p, at_key), path_str(p), msg) for p, msg, at_key in issues]
    if profile is not None:
        refs = check_profile(profile, regions, sites)
        problems += [Problem(rel, doc.line_of(p), path_str(p), msg) for p, msg in refs]
    if problems or profile is None:
        raise ScenarioError(problems or [Problem(rel, 1, "", "not a usable scenario")], rel)
    return replace(profile, source=str(path))


def scenario_path(root: Path, name: str) -> Path | None:
    """``NAME`` -> ``<root>/scenarios/NAME.yaml`` (or .yml) when it exists; a path to a file as is."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        return Path(name)
    for suffix in (".yaml", ".yml"):
        candidate = root / SCENARIO_DIR / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    return None
