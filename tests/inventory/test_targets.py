"""Target patterns: globs, unions, exclusions, selectors, SITE/NODE, typos."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridctl.core.errors import NotFoundError, UsageError
from gridctl.core.inventory.targets import select_nodes, select_sites
from gridctl.inventory.load import load_inventory
from tests.conftest import EXAMPLE


@pytest.fixture(scope="module")
def example():
    return load_inventory(EXAMPLE)


@pytest.mark.parametrize(
    ("pattern", "model", "expected"),
    [
        ("phl-*", None, ["phl-co-12", "phl-edge-04", "phl-pop-01"]),
        ("phl-*,!phl-edge-04", None, ["phl-co-12", "phl-pop-01"]),
        ("phl-co-12,fra-pop-01", None, ["fra-pop-01", "phl-co-12"]),
        ("region:eu-de", None, ["ber-edge-01", "fra-pop-01", "muc-co-02"]),
        ("region:eu-*,!kind:edge", None, ["fra-pop-01", "lyo-co-05", "muc-co-02", "par-pop-01"]),
        ("kind:cloud", None, ["cloud-use1"]),
        ("jurisdiction:FR", None, ["lyo-co-05", "par-edge-02", "par-pop-01"]),
        ("jurisdiction:fr", None, ["lyo-co-05", "par-edge-02", "par-pop-01"]),
        ("label:tier=fallback", None, ["cloud-use1"]),
        ("label:metro=p*", None, ["par-edge-02", "par-pop-01", "phl-co-12", "phl-edge-04", "phl-pop-01"]),
        ("!region:us-*,!region:eu-fr", None, ["ber-edge-01", "fra-pop-01", "muc-co-02"]),
        ("phl-co-12/phl-co-12-gpu-02", None, ["phl-co-12"]),
        (
            "all",
            "llama-3.1-70b-instruct",
            ["chi-pop-01", "cloud-use1", "fra-pop-01", "nyc-pop-01", "par-pop-01", "phl-pop-01"],
        ),
        ("kind:edge", "parakeet-*", ["ber-edge-01", "jc-edge-01", "par-edge-02", "phl-edge-04"]),
        ("zzz-*", None, []),
        ("region:eu-*,&kind:edge", None, ["ber-edge-01", "par-edge-02"]),
        ("&kind:edge,!phl-*", None, ["ber-edge-01", "jc-edge-01", "par-edge-02"]),
        ("phl-*,fra-*,&region:us-phl,&kind:edge", None, ["phl-edge-04"]),
        ("phl-co-1[12]", None, ["phl-co-12"]),
        ("phl-co-1[!2]", None, []),
    ],
)
def test_select_sites(example, pattern, model, expected) -> None:
    assert [s.name for s in select_sites(example, pattern, model)] == expected


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("phl-co-12", ["phl-co-12/phl-co-12-gpu-01", "phl-co-12/phl-co-12-gpu-02"]),
        ("phl-co-12/*-02", ["phl-co-12/phl-co-12-gpu-02"]),
        ("phl-*/*-gpu-01,!phl-edge-04", ["phl-co-12/phl-co-12-gpu-01", "phl-pop-01/phl-pop-01-gpu-01"]),
        ("cloud-use1-gpu-03", ["cloud-use1/cloud-use1-gpu-03"]),
        ("region:eu-fr,!par-pop-01", ["lyo-co-05/lyo-co-05-gpu-01", "par-edge-02/par-edge-02-gpu-01"]),
    ],
)
def test_select_nodes(example, pattern, expected) -> None:
    assert [n.address for n in select_nodes(example, pattern)] == expected


def test_no_pattern_selects_everything(example) -> None:
    assert len(select_sites(example, None)) == 15
    assert len(select_nodes(example, None)) == sum(len(s.nodes) for s in example.sites)


@pytest.mark.parametrize(
    ("pattern", "error", "fragment"),
    [
        ("phl-co-21", NotFoundError, "did you mean 'phl-co-12'"),
        ("regoin:eu-de", UsageError, "did you mean 'region:eu-de'"),
        ("region:eu-dd", NotFoundError, "did you mean 'eu-de'"),
        ("kind:edg", NotFoundError, "did you mean 'edge'"),
        ("phl-co-12/gpu-9", NotFoundError, "no node in site phl-co-12"),
        ("phl-*,,fra-*", UsageError, "empty term"),
        ("label:tier", UsageError, "needs a value"),
        ("a/b/c", UsageError, "SITE/NODE"),
        ("phl-[", UsageError, "never closed"),
        ("phl-*/gpu-[0", UsageError, "never closed"),
        ("label:tier=[x", UsageError, "never closed"),
        ("!&kind:edge", UsageError, "two prefixes"),
    ],
)
def test_bad_patterns_say_what_and_suggest(example, pattern, error, fragment) -> None:
    with pytest.raises(error) as info:
        select_nodes(example, pattern) if "/" in pattern else select_sites(example, pattern)
    text = f"{info.value.message} {info.value.hint}"
    assert fragment in text


def test_inventory_order_does_not_matter(tmp_path: Path, example) -> None:
    # Same inventory, site files written in reverse order: same selection, same order.
    import shutil

    dest = tmp_path / "inv"
    shutil.copytree(EXAMPLE, dest)
    for f in sorted((dest / "sites").iterdir(), reverse=True):
        f.write_text(f.read_text())
    again = load_inventory(dest)
    assert [s.name for s in select_sites(again, "region:us-*")] == [
        s.name for s in select_sites(example, "region:us-*")
    ]
