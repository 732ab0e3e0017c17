"""What a request asks of placement, parsed once (``daemon/admission.py``): the ``x-grid-*``
headers of a proxied request and the query of ``/grid/route`` go through the same parser."""

from __future__ import annotations

import pytest

from gridctl.core.placement.decision import Request
from gridctl.daemon.admission import parse_count, parse_placement


@pytest.mark.parametrize(
    ("args", "want"),
    [
        (("us-east", "m", None, None), Request("us-east", "m", None, None)),
        (("us-east", "m", "eu", "250"), Request("us-east", "m", "EU", 250.0)),
        (("us-east", "m", "", "1e3"), Request("us-east", "m", None, 1000.0)),
    ],
)
def test_one_parser_for_what_a_request_asks(
    args: tuple[str, str, str | None, str | None], want: Request
) -> None:
    assert parse_placement(*args) == want


@pytest.mark.parametrize("slo", ["fast", "0", "-5", "nan", "inf", ""])
def test_an_slo_must_be_a_positive_number(slo: str) -> None:
    with pytest.raises(ValueError):
        parse_placement("us-east", "m", None, slo)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("0", True),
        ("4096", True),
        ("-1", False),
        ("1_000", False),
        (" 5", False),
        ("١٢", False),
        ("9" * 10, False),
    ],
)
def test_a_token_count_is_plain_digits_and_bounded(text: str, ok: bool) -> None:
    if ok:
        assert parse_count(text) == int(text)
    else:
        with pytest.raises(ValueError):
            parse_count(text)
