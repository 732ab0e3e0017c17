"""The checks both sides make beyond llhttp: what a kept answer says is what the regex says."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gridctl.net.syntax import CONTROL_BYTES, HOST, has_control_byte, valid_host

HOSTS = st.sampled_from(["example.com", "a:80", "[::1]:8080", "a b", "a:80x", "", "x\ty", "é"]) | st.text(
    max_size=12
)
REASONS = st.sampled_from([b"OK", b"Not Found", b"a\tb", b"a\rb", b"\x7f", b""]) | st.binary(max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(HOSTS, max_size=8), st.lists(REASONS, max_size=8))
def test_checked_values_kept_or_not_answer_as_the_regex_does(hosts: list[str], reasons: list[bytes]) -> None:
    for host in hosts * 2:  # the second time round, from what was kept
        assert valid_host(host) == (HOST.fullmatch(host) is not None), host
    for reason in reasons * 2:
        assert has_control_byte(reason) == (CONTROL_BYTES.search(reason) is not None), reason


def test_long_values_are_checked_each_time_never_kept() -> None:
    """A hostile client (Host) or site (reason) sending new 8 KiB values fills no set with
    them: what is kept stays small, and each long value still answers as the regex does."""
    from gridctl.net import syntax

    for i in range(syntax._SEEN_MAX + 10):
        assert valid_host(f"{i:06d}" + "a" * 8000)
        assert not has_control_byte(b"%06d" % i + b"r" * 8000)
    assert valid_host("a" * 8000 + " ") is False
    assert has_control_byte(b"r" * 8000 + b"\n")
    assert all(len(h) <= 256 for h in syntax._GOOD_HOSTS)
    assert all(len(r) <= 256 for r in syntax._CLEAN_REASONS)
