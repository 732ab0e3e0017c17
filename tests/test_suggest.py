"""One did-you-mean for every enumerated value and name."""

from __future__ import annotations

from gridctl.core.suggest import closest, did_you_mean


def test_a_close_value_is_suggested_case_insensitively() -> None:
    assert did_you_mean("ngnix", ["json", "yaml", "nginx", "haproxy", "envoy"]) == "did you mean 'nginx'?"
    assert did_you_mean("GIRD", ["grid", "nearest", "central"]) == "did you mean 'grid'?"
    assert closest("phl-co-21", ["phl-co-12", "phl-pop-01", "fra-pop-01"]) == ["phl-co-12"]


def test_a_far_value_lists_the_choices_bounded() -> None:
    assert did_you_mean("nosuch", ["a1", "b2"]) == "choose one of: a1, b2"
    many = [f"site-{i:02d}" for i in range(20)]
    hint = did_you_mean("zzzzzz", many, "sites")
    assert hint.startswith("sites: site-00, site-01") and hint.endswith("... (20 in all)")
    assert did_you_mean("x", []) == "there is none"
