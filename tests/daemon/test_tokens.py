"""Who may call the daemon: a bearer token, plain (GRIDCTL_DAEMON_TOKEN) or hashed (--tokens)."""

from __future__ import annotations

import hashlib

import pytest

from gridctl.daemon.tokens import Tokens

HASHED = hashlib.sha256(b"from-the-file").digest()


@pytest.mark.parametrize(
    ("tokens", "header", "ok"),
    [
        (Tokens(plain="plain-1"), "Bearer plain-1", True),
        (Tokens(plain="plain-1"), "bearer  plain-1 ", True),
        (Tokens(plain="plain-1"), "Bearer from-the-file", False),
        (Tokens(plain="plain-1"), "Basic plain-1", False),
        (Tokens(digests=(HASHED,)), "Bearer from-the-file", True),
        (Tokens(digests=(HASHED,)), "Bearer plain-1", False),
        (Tokens(digests=(HASHED,), plain="plain-1"), "Bearer plain-1", True),
        (Tokens(digests=(HASHED,), plain="plain-1"), "Bearer from-the-file", True),
        (Tokens(digests=(HASHED,), plain="plain-1"), "Bearer other", False),
        (Tokens(digests=(HASHED,), plain="plain-1"), "", False),
        (Tokens(), "Bearer ", False),
    ],
)
def test_a_bearer_token_is_allowed_when_it_is_the_plain_one_or_hashes_to_a_listed_one(
    tokens: Tokens, header: str, ok: bool
) -> None:
    assert tokens.allows(header) is ok
