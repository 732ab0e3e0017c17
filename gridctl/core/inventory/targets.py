"""Target patterns, shared by every command that takes targets.

Grammar (Ansible-like):  PATTERN := TERM ("," TERM)*     TERM := ["!" | "&"] SELECTOR
SELECTOR is one of
  GLOB               site name (``phl-*``); for node commands also a node name
  SITE/NODE          nodes, both parts may be globs (``phl-*/gpu-0[12]``)
  region:GLOB  kind:GLOB  jurisdiction:GLOB  label:KEY=GLOB
  all, *             everything
Plain terms are united; each ``&`` term then keeps only what it also matches
(``region:eu-*,&kind:edge``: the edge sites of the eu regions); ``!`` terms are
removed last (a pattern of only ``&`` and ``!`` terms starts from everything). A
term without glob characters that matches nothing is an error with a suggestion:
it is almost always a typo; so is a glob that cannot match (``phl-[``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TypeVar

from gridctl.core.errors import NotFoundError, UsageError
from gridctl.core.inventory.model import SITE_KINDS, Inventory, Node, Site

T = TypeVar("T")

SELECTORS = ("region", "kind", "jurisdiction", "label")
_GLOB = set("*?[")


@dataclass(frozen=True)
class Term:
    text: str
    negate: bool
    selector: str  # "name", "node", or one of SELECTORS
    value: str
    node: str = ""  # the NODE part of SITE/NODE
    intersect: bool = False  # an "&" term

    @property
    def literal(self) -> bool:
        return not (_GLOB & set(self.value + self.node))


def parse_pattern(pattern: str) -> list[Term]:
    terms: list[Term] = []
    for raw in pattern.split(","):
        text = raw.strip()
        negate, intersect = text.startswith("!"), text.startswith("&")
        body = text[1:].strip() if negate or intersect else text
        if body.startswith(("!", "&")):
            raise UsageError(
                f"term '{text}' in target pattern {pattern!r} has two prefixes",
                hint="one of '!' (remove) or '&' (keep only), e.g. 'region:eu-*,&kind:edge,!ber-*'",
            )
        if not body:
            raise UsageError(
                f"empty term in target pattern {pattern!r}",
                hint="terms are separated by ',' e.g. 'phl-*,!phl-edge-04'",
            )
        if ":" in body and "/" not in body:
            sel, _, value = body.partition(":")
            if sel not in SELECTORS:
                near = difflib.get_close_matches(sel, SELECTORS, n=1)
                hint = (
                    f"did you mean '{near[0]}:{value}'?"
                    if near
                    else f"selectors: {', '.join(s + ':' for s in SELECTORS)}"
                )
                raise UsageError(f"unknown selector '{sel}:' in target pattern {pattern!r}", hint=hint)
            if not value or (sel == "label" and "=" not in value):
                raise UsageError(
                    f"'{body}' needs a value",
                    hint="e.g. region:eu-de, kind:edge, jurisdiction:DE, label:tier=metro",
                )
            _check_glob(value.partition("=")[2] if sel == "label" else value, body, pattern)
            terms.append(Term(text, negate, sel, value, intersect=intersect))
        elif "/" in body:
            site, _, node = body.partition("/")
            if not site or not node or "/" in node:
                raise UsageError(
                    f"'{body}' is not SITE/NODE", hint="e.g. phl-co-12/phl-co-12-gpu-01 or 'phl-*/*'"
                )
            _check_glob(site, body, pattern)
            _check_glob(node, body, pattern)
            terms.append(Term(text, negate, "node", site, node, intersect=intersect))
        else:
            _check_glob(body, body, pattern)
            terms.append(Term(text, negate, "name", "*" if body == "all" else body, intersect=intersect))
    return terms


def _check_glob(glob: str, body: str, pattern: str) -> None:
    """A '[' that never closes matches only a literal '[' under fnmatch: never what was meant."""
    i = 0
    while (i := glob.find("[", i)) >= 0:
        j = i + 1
        if j < len(glob) and glob[j] == "!":
            j += 1
        if j < len(glob) and glob[j] == "]":
            j += 1  # a leading ']' is a member of the set
        close = glob.find("]", j)
        if close < 0:
            raise UsageError(
                f"'{body}' in target pattern {pattern!r}: '[' is never closed",
                hint="a set is '[...]', e.g. 'phl-co-1[12]'; quote the pattern in the shell",
            )
        i = close + 1


def _site_matches(term: Term, site: Site) -> bool:
    if term.selector == "name":
        return fnmatchcase(site.name, term.value)
    if term.selector == "region":
        return fnmatchcase(site.region, term.value)
    if term.selector == "kind":
        return fnmatchcase(site.kind, term.value)
    if term.selector == "jurisdiction":
        return fnmatchcase(site.jurisdiction, term.value.upper())
    if term.selector == "label":
        key, _, val = term.value.partition("=")
        return key in site.labels and fnmatchcase(site.labels[key], val)
    return False


def _node_matches(term: Term, node: Node, site: Site) -> bool:
    if term.selector == "node":
        return fnmatchcase(site.name, term.value) and fnmatchcase(node.name, term.node)
    if term.selector == "name" and fnmatchcase(node.name, term.value):
        return True
    return _site_matches(term, site)


def select_sites(inv: Inventory, pattern: str | None, model: str | None = None) -> list[Site]:
    """Sites matching ``pattern`` (all when None), optionally serving ``model`` (a glob)."""
    terms = parse_pattern(pattern) if pattern else []
    chosen = _apply(
        terms,
        inv.sites,
        lambda t, s: (
            any(_node_matches(t, n, s) for n in s.nodes) if t.selector == "node" else _site_matches(t, s)
        ),
    )
    _check_literals(inv, terms, node_level=False)
    if model:
        chosen = [s for s in chosen if any(fnmatchcase(m.name, model) for m in s.models)]
    return chosen


def select_nodes(inv: Inventory, pattern: str | None, model: str | None = None) -> list[Node]:
    """Nodes matching ``pattern``: a site term selects all of the site's nodes."""
    terms = parse_pattern(pattern) if pattern else []
    sites = {s.name: s for s in inv.sites}
    pairs = [(n, sites[n.site]) for n in inv.nodes()]
    chosen = _apply(terms, pairs, lambda t, p: _node_matches(t, p[0], p[1]))
    _check_literals(inv, terms, node_level=True)
    if model:
        chosen = [p for p in chosen if any(fnmatchcase(m.name, model) for m in p[1].models)]
    return [n for n, _ in chosen]


def _apply(terms: list[Term], items: Sequence[T], matches: Callable[[Term, T], bool]) -> list[T]:
    positive = [t for t in terms if not t.negate and not t.intersect]
    both = [t for t in terms if t.intersect]
    negative = [t for t in terms if t.negate]
    chosen = [i for i in items if any(matches(t, i) for t in positive)] if positive else list(items)
    chosen = [i for i in chosen if all(matches(t, i) for t in both)]
    return [i for i in chosen if not any(matches(t, i) for t in negative)]


def _check_literals(inv: Inventory, terms: list[Term], node_level: bool) -> None:
    """A literal term that names nothing that exists is a typo: say so."""
    sites = [s.name for s in inv.sites]
    nodes = [n.name for n in inv.nodes()]
    known: dict[str, list[str]] = {"region": [r.name for r in inv.grid.regions], "kind": list(SITE_KINDS)}
    for t in terms:
        if not t.literal or t.value == "*":
            continue
        if t.selector == "name":
            if t.value in sites or (node_level and t.value in nodes):
                continue
            _not_found(
                "site or node" if node_level else "site", t.value, sites + nodes if node_level else sites
            )
        elif t.selector == "node":
            site = inv.site(t.value)
            if site is None:
                _not_found("site", t.value, sites)
            elif t.node not in [n.name for n in site.nodes]:
                _not_found(f"node in site {t.value}", t.node, [n.name for n in site.nodes])
        elif t.selector in ("region", "kind") and t.value not in known[t.selector]:
            _not_found(t.selector, t.value, known[t.selector])


def _not_found(what: str, value: str, pool: list[str]) -> None:
    near = difflib.get_close_matches(value, pool, n=1)
    raise NotFoundError(
        f"no {what} named '{value}'",
        hint=f"did you mean '{near[0]}'?" if near else "list them with `gridctl site ls` / `gridctl node ls`",
    )
