"""``Site``'s API key: stripped, and refused with a reason when a control character is left."""

from __future__ import annotations

import pytest

from gridctl.core.inventory.model import Location, Site

SITE = Site("s", "edge", "r", "US", Location(0.0, 0.0), "http://127.0.0.1:9", api_key_env="S_KEY")


@pytest.mark.parametrize(
    ("value", "header"),
    [
        ("k3y", "Bearer k3y"),
        ("k3y\n", "Bearer k3y"),  # KEY=$(cat keyfile) kept the newline, or an EnvironmentFile
        ("  k3y\r\n", "Bearer k3y"),
        ("\tk3y \x0b\x0c", "Bearer k3y"),
        ("", None),
        (" \n", None),
        (None, None),
    ],
)
def test_auth_headers_strip_surrounding_whitespace(value: str | None, header: str | None) -> None:
    environ = {} if value is None else {"S_KEY": value}
    assert SITE.auth_headers(environ) == ({"Authorization": header} if header else {})
    assert SITE.api_key_problem(environ) is None


@pytest.mark.parametrize("bad", ["\r", "\n", "\x00", "\x01", "\t", "\x1b", "\x1f", "\x7f"])
def test_a_control_character_inside_the_key_is_named_not_shown(bad: str) -> None:
    environ = {"S_KEY": f"k3y{bad}more"}
    problem = SITE.api_key_problem(environ)
    assert problem == "API key in $S_KEY contains a control character; set it to the key alone"
    assert "k3y" not in problem and "more" not in problem


def test_no_variable_no_key() -> None:
    site = Site("s", "edge", "r", "US", Location(0.0, 0.0), "http://127.0.0.1:9")
    assert site.auth_headers({"S_KEY": "k3y"}) == {} and site.api_key_problem({"S_KEY": "k\n1"}) is None
