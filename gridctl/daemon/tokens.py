"""The daemon's client tokens: a file of their SHA-256 hashes (``--tokens FILE``), and
``GRIDCTL_DAEMON_TOKEN``.

The file holds one ``sha256:<64 hex digits>`` per line; ``#`` starts a comment, blank lines are
skipped. It never holds a token itself, so it can be read by whoever deploys it. Make a line
with ``gridctl daemon token-hash`` (the token on stdin), or
``printf %s "$TOKEN" | sha256sum | awk '{print "sha256:" $1}'``.

A request's bearer token is hashed once and compared with every hash in constant time (all of
them, whatever matches), so neither a token nor which line matched shows in the timing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from pathlib import Path

from gridctl.core.errors import UsageError

PREFIX = "sha256:"
_HASH = re.compile(r"sha256:([0-9a-fA-F]{64})")
MAX_FILE = 1 << 20  # a tokens file over this is not one


def hash_token(token: str) -> str:
    """The line of a tokens file that lets ``token`` in."""
    return PREFIX + hashlib.sha256(token.encode()).hexdigest()


def parse_tokens(text: str, where: str) -> tuple[bytes, ...]:
    """The digests of a tokens file's text; UsageError naming ``where:line`` for a bad line."""
    digests: list[bytes] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _HASH.fullmatch(line)
        if m is None:
            shown = "a line that looks like a token itself" if ":" not in line else repr(line[:20] + "...")
            raise UsageError(
                f"{where}:{number}: expected sha256:<64 hex digits>, got {shown}",
                hint="make a line with `gridctl daemon token-hash` (the token on stdin)",
            )
        digests.append(bytes.fromhex(m.group(1)))
    return tuple(dict.fromkeys(digests))


def load_tokens(path: Path) -> tuple[bytes, ...]:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE + 1)
    except OSError as exc:
        raise UsageError(f"--tokens {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE:
        raise UsageError(f"--tokens {path}: over {MAX_FILE} bytes; not a tokens file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"--tokens {path}: not UTF-8 text") from None
    return parse_tokens(text, str(path))


@dataclass(frozen=True)
class Tokens:
    """Who may call the daemon: the hashes from ``--tokens`` and the ``GRIDCTL_DAEMON_TOKEN``."""

    digests: tuple[bytes, ...] = ()
    plain: str | None = None
    _plain_digest: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.plain is not None:
            object.__setattr__(self, "_plain_digest", hashlib.sha256(self.plain.encode()).digest())

    def __bool__(self) -> bool:
        return bool(self.digests) or self.plain is not None

    def allows(self, authorization: str) -> bool:
        """Whether an ``Authorization`` header carries a known bearer token (constant time).
        The presented token is hashed and its digest compared with each known one: digests have
        one length, so the time taken reveals neither a token nor its length."""
        scheme, _, token = authorization.partition(" ")
        ok = scheme.lower() == "bearer"
        digest = hashlib.sha256(token.strip().encode("utf-8", "replace")).digest()
        found = False
        if self._plain_digest is not None:
            found |= hmac.compare_digest(digest, self._plain_digest)
        for known in self.digests:
            found |= hmac.compare_digest(digest, known)
        return ok and found
