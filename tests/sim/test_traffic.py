"""Traffic generation: seeded, rates and bursts as the profile says, sessions and prefixes as documented."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from gridctl.sim.profiles import PROFILES, Bursts, Lengths
from gridctl.sim.traffic import QUANTILES, burst_windows, generate_workload, length_table

REGIONS = ["r1", "r2"]
VOICE = PROFILES["voice-burst"]


def test_same_seed_same_requests_and_another_seed_differs() -> None:
    a = generate_workload(VOICE, REGIONS, "m", random.Random(7))
    b = generate_workload(VOICE, REGIONS, "m", random.Random(7))
    c = generate_workload(VOICE, REGIONS, "m", random.Random(8))
    assert a.t == b.t and a.columns() == b.columns()
    assert a.t != c.t


def test_requests_are_sorted_within_the_run_and_columns_line_up() -> None:
    w = generate_workload(VOICE, REGIONS, "m", random.Random(1))
    w.check()
    assert w.t == sorted(w.t)
    assert w.t[0] >= 0.0 and w.t[-1] < VOICE.duration_s
    assert set(w.region) == {0, 1} and set(w.model) == {0}


@pytest.mark.parametrize("name", list(PROFILES))
def test_base_rate_is_the_profiles_without_bursts(name: str) -> None:
    p = replace(PROFILES[name], bursts=None, duration_s=200.0, rate_per_region=20.0)
    w = generate_workload(p, REGIONS, "m", random.Random(3))
    rate = len(w) / p.duration_s / len(REGIONS)
    assert 0.8 * 20.0 < rate < 1.2 * 20.0, rate


def test_bursts_raise_the_rate_inside_their_windows() -> None:
    p = replace(VOICE, bursts=Bursts(every_s=40.0, length_s=10.0, factor=4.0, first_s=10.0), duration_s=120.0)
    w = generate_workload(p, REGIONS, "m", random.Random(5))
    windows = burst_windows(p.bursts, p.duration_s)
    assert windows == ((10.0, 20.0), (50.0, 60.0), (90.0, 100.0))
    inside = sum(1 for t in w.t if any(a <= t < b for a, b in windows))
    base = p.rate_per_region * len(REGIONS)
    # new sessions start 4x as often; their later turns follow, so requests rise less, and after
    assert inside / 30.0 > 1.8 * base


def test_scale_multiplies_the_rate() -> None:
    p = replace(VOICE, bursts=None, duration_s=100.0)
    one = len(generate_workload(p, REGIONS, "m", random.Random(2)))
    two = len(generate_workload(p, REGIONS, "m", random.Random(2), scale=2.0))
    assert 1.7 < two / one < 2.3


def test_profile_rates_name_the_regions_that_send_traffic() -> None:
    p = replace(VOICE, rates={"r2": 10.0}, duration_s=20.0)
    w = generate_workload(p, ["r1", "r2", "r3"], "m", random.Random(1))
    assert w.regions == ("r2",) and set(w.region) == {0}


def test_sessions_carry_their_history_and_keep_one_prefix() -> None:
    p = replace(VOICE, bursts=None, duration_s=60.0, turns=5.0, think_s=2.0)
    w = generate_workload(p, REGIONS, "m", random.Random(4))
    last: dict[int, int] = {}
    prefix_of: dict[int, int] = {}
    continued = 0
    for i in range(len(w)):
        s = w.session[i]
        assert s >= 0
        assert 0 <= w.prefix[i] < p.prefixes and w.prefix_tokens[i] == p.prefix_tokens
        assert w.prompt[i] >= w.prefix_tokens[i]
        assert w.prefix[i] == prefix_of.setdefault(s, w.prefix[i])
        if w.history[i]:
            continued += 1
            assert w.history[i] < w.prompt[i]  # the previous turn, then new tokens
            if s in last:  # a turn seen in the run: its prompt and output lead this prompt
                assert w.history[i] == last[s]
        last[s] = w.prompt[i] + w.output[i]
    assert continued > len(w) / 2


def test_single_turn_profiles_have_no_sessions() -> None:
    p = replace(VOICE, turns=1.0, duration_s=10.0)
    w = generate_workload(p, REGIONS, "m", random.Random(1))
    assert set(w.session) == {-1} and set(w.history) == {0}


def test_length_table_is_clipped_and_centred_on_the_median() -> None:
    table = length_table(Lengths(median=20, sigma=0.5, lo=4, hi=48))
    assert len(table) == QUANTILES
    assert min(table) >= 4 and max(table) == 48
    assert sorted(table)[QUANTILES // 2] == 20
    assert set(length_table(Lengths(7, 0.0, 1, 100))) == {7}
