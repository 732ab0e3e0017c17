"""The one prefix-cache model (issue 11): chains of runs, leading matches, an LRU bounded by tokens.

The daemon and the lab feed it text (:func:`text_chain`), the simulator runs of a shared prefix
and a session (:func:`prompt_chain`); the property at the end shows the two kinds of chain give
the same hits for the same conversations, to within one block.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridctl.core.placement.prefix import PrefixCache, SentIndex, text_chain
from gridctl.sim.traffic import prompt_chain


@pytest.mark.parametrize(
    ("held", "chain", "hit"),
    [
        ([], [("a", 10)], 0),  # nothing held
        ([("a", 10)], [("a", 10), ("b", 5)], 10),  # the leading run
        ([("a", 10), ("b", 5)], [("a", 10), ("b", 5)], 15),  # all of it
        ([("a", 10), ("b", 5)], [("a", 10), ("b", 3)], 13),  # a shorter want of the last run
        ([("a", 10), ("b", 5)], [("a", 10), ("b", 9)], 15),  # a run held in part: that part, then stop
        ([("a", 4), ("b", 5)], [("a", 10), ("b", 5)], 4),  # ...even when the next run is held
        ([("b", 5)], [("a", 10), ("b", 5)], 0),  # a later run without its leading one: nothing
        ([("a", 10)], [], 0),
    ],
)
def test_match_counts_the_leading_runs_held(held, chain, hit) -> None:  # type: ignore[no-untyped-def]
    cache = PrefixCache(1000)
    cache.insert(held)
    assert cache.match(chain) == hit
    assert cache.used == sum(t for _, t in held)  # match changes nothing


def test_insert_grows_runs_and_evicts_the_least_recent_by_tokens() -> None:
    cache = PrefixCache(100)
    cache.insert([("a", 40), ("b", 20)])
    cache.insert([("a", 40), ("b", 50)])  # the session grew: b counted once, at its new length
    assert cache.used == 90 and len(cache) == 2
    cache.insert([("c", 30)])  # over 100: a (least recently used) goes
    assert cache.match([("a", 40)]) == 0 and cache.match([("c", 30)]) == 30
    assert cache.used == 80
    assert cache.lookup([("d", 10), ("e", 10)]) == 0  # what a site does: miss, then cached
    assert cache.lookup([("d", 10), ("e", 10)]) == 20
    assert cache.used <= cache.capacity
    cache.insert([("huge", 500)])  # bigger than the cache: nothing else survives, nor it
    assert cache.used == 0 and len(cache) == 0


def test_text_chain_blocks_are_chained_and_partial_blocks_left_out() -> None:
    a, b = "a" * 64, "b" * 64
    ab, ba = text_chain(a + b + "tail", 64, 16), text_chain(b + a, 64, 16)
    assert [t for _, t in ab] == [16, 16]  # "tail" is a partial block
    assert ab[0][0] != ba[1][0]  # the same block after another prefix has another key
    assert text_chain(a + b, 64, 16)[1] == ab[1]
    assert len(text_chain(a * 100, 64, 16, max_blocks=64)) == 64
    assert text_chain("é" * 32, 64, 16) == text_chain("é" * 32, 64, 16)  # bytes, not characters
    assert len(text_chain("é" * 32, 64, 16)) == 1


def test_sent_index_is_per_site_and_model_bounded_by_its_capacity_and_forgets_removed_sites() -> None:
    idx = SentIndex(lambda site, model: 120 if site == "small" else 1000)
    sites = ["s1", "s2", "small"]
    idx.record("s1", "m", [("p", 100)])
    idx.record("s2", "m", [("p", 100), ("x", 50)])
    assert idx.cached("m", [("p", 100), ("x", 50)], sites) == {"s1": 100, "s2": 150}
    assert idx.cached("m", [("p", 100)], ["s2", "s3"]) == {"s2": 100}
    assert idx.cached("other", [("p", 100)], sites) == {}  # sent for m: not in other's cache
    assert idx.cached("m", [], sites) == {} and idx.cached("m", [("q", 5)], sites) == {}
    idx.record("small", "m", [("p", 100)])
    idx.record("small", "m", [("y", 50)])  # over its 120 tokens: p is forgotten, as the site would
    assert idx.cached("m", [("p", 100)], ["small"]) == {}
    idx.forget(["s2"])
    assert idx.cached("m", [("p", 100)], sites) == {"s2": 100}


BLOCK_CHARS, BLOCK_TOKENS = 64, 16  # the lab's: 4 characters a token


@settings(max_examples=150, deadline=None)
@given(
    prefix_tokens=st.sampled_from([0, 16, 100, 400]),
    turns=st.lists(
        st.tuples(st.integers(0, 3), st.integers(1, 200), st.integers(1, 60)),  # session, new, output
        min_size=1,
        max_size=25,
    ),
)
def test_text_and_simulated_chains_give_the_same_hits(prefix_tokens: int, turns) -> None:  # type: ignore[no-untyped-def]
    """Conversations as a lab site sees them (text) and as the simulator does (a prefix id, a
    session id, token counts): each turn's hit agrees to within one block (the text's partial
    last block is never cached)."""
    text_cache, run_cache = PrefixCache(1 << 30), PrefixCache(1 << 30)
    prefix = "".join(chr(65 + i % 23) for i in range(prefix_tokens * 4))
    history: dict[int, str] = {}
    for session, new, output in turns:
        mark = chr(97 + session)  # each session's own characters: no accidental sharing
        prompt = history.get(session, prefix) + mark * (new * 4)
        hist_tokens = (len(history[session]) // 4) if session in history else 0
        text_hit = text_cache.lookup(text_chain(prompt, BLOCK_CHARS, BLOCK_TOKENS))
        pid = 0 if prefix_tokens else -1
        run_hit = run_cache.match(prompt_chain(pid, prefix_tokens, session, max(hist_tokens, prefix_tokens)))
        answer = mark.upper() * (output * 4)
        run_cache.insert(prompt_chain(pid, prefix_tokens, session, len(prompt) // 4 + output))
        text_cache.insert(text_chain(prompt + answer, BLOCK_CHARS, BLOCK_TOKENS))  # the answer's KV too
        history[session] = prompt + answer
        assert run_hit - BLOCK_TOKENS < text_hit <= run_hit
