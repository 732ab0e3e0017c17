"""The fault matrix through real HAProxy (tests/routing/faults.py): with a healthy site left, no
request is lost (but for :data:`~tests.routing.faults.KNOWN_LOSS`) and none is answered twice,
streamed or not. Each case is a fresh lab grid and HAProxy, rendered with ``--read-timeout 1``
(a hung site costs a request one second); 10 requests per case. One file per data plane keeps
each file well under a minute."""

from __future__ import annotations

import pytest

from tests.routing.conftest import require
from tests.routing.faults import FAULTS, LONG_CHAT, LONG_FAULTS, check_case, check_long_case, run_case


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("fault", FAULTS)
def test_haproxy_loses_and_duplicates_nothing_while_a_healthy_site_exists(fault: str, stream: bool) -> None:
    require("haproxy")
    check_case("haproxy", fault, stream)


@pytest.mark.parametrize("fault", LONG_FAULTS)
def test_haproxy_sends_a_long_chat_again_after_an_answer_that_fails_over(fault: str) -> None:
    require("haproxy")
    check_long_case("haproxy", fault)


def test_haproxy_with_its_own_16_kb_buffer_loses_a_long_chat_a_503_should_move() -> None:
    # why the rendered file raises tune.bufsize (route render --haproxy-buffer-kb, 128 kB):
    # HAProxy sends a request again after an answer only if the request fits in its buffer
    require("haproxy")
    counts = run_case("haproxy", "503-one", False, 4, prompt=LONG_CHAT, haproxy_buffer_kb=16)
    assert counts.lost >= 1 and counts.tries == 0, counts
