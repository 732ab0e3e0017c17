"""The access log's hand-written line is the JSON of its record, byte for byte."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from gridctl.daemon.accesslog import Trace, build_line, format_line, new_request_id, parse_request_id

text = st.text(max_size=40)  # any code point: quotes, backslashes, controls, non-ASCII
maybe_text = st.none() | text
count = st.none() | st.integers(min_value=0, max_value=10**9)


@settings(max_examples=300, deadline=None)
@given(
    rid=text,
    region=maybe_text,
    model=st.none() | st.text(max_size=300),
    site=maybe_text,
    status=st.integers(min_value=0, max_value=999),
    outcome=text,
    start=st.floats(min_value=0, max_value=1e6),
    ttft=st.none() | st.floats(min_value=0, max_value=1e4),
    total=st.floats(min_value=0, max_value=1e4),
    tokens=st.tuples(count, count),
    tried=st.lists(text, max_size=4),
    slo_ms=st.none() | st.floats(min_value=1, max_value=1e6) | st.integers(min_value=1, max_value=10**6),
    expected_miss=st.none() | st.booleans(),
    wall=st.floats(min_value=0, max_value=4e9),
)
def test_format_line_is_the_json_of_build_line(
    rid, region, model, site, status, outcome, start, ttft, total, tokens, tried, slo_ms, expected_miss, wall
) -> None:
    t = Trace(rid, region, lambda _: None)
    t.start, t.wall = start, wall
    t.model, t.site, t.status, t.outcome = model, site, status, outcome
    t.first_token = None if ttft is None else start + ttft
    t.finished = start + total
    t.prompt_tokens, t.completion_tokens = tokens
    t.tried, t.slo_ms, t.expected_miss = tried, slo_ms, expected_miss
    line = format_line(t)
    assert line == json.dumps(build_line(t), separators=(",", ":"))
    assert json.loads(line)["request_id"] == rid


def test_generated_request_ids_are_128_bit_hex_and_distinct() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert all(parse_request_id(i) == i for i in ids)


def test_forked_workers_generate_different_request_ids() -> None:
    """--workers forks: each worker's generator must be its own, not a copy of the parent's."""
    import os

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then out
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert len(child) == 32
    assert child != new_request_id()
