"""The fault matrix through real Envoy (tests/routing/faults.py): with a healthy site left, no
request is lost (but for :data:`~tests.routing.faults.KNOWN_LOSS`) and none is answered twice,
streamed or not. Each case is a fresh lab grid and Envoy, rendered with ``--read-timeout 1``
(a hung site costs a request one second); 10 requests per case. One file per data plane keeps
each file well under a minute."""

from __future__ import annotations

import pytest

from tests.routing.conftest import require
from tests.routing.faults import FAULTS, LONG_FAULTS, check_case, check_long_case


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("fault", FAULTS)
def test_envoy_loses_and_duplicates_nothing_while_a_healthy_site_exists(fault: str, stream: bool) -> None:
    require("envoy")
    check_case("envoy", fault, stream)


@pytest.mark.parametrize("fault", LONG_FAULTS)
def test_envoy_sends_a_long_chat_again_after_an_answer_that_fails_over(fault: str) -> None:
    require("envoy")
    check_long_case("envoy", fault)
