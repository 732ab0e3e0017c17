"""What the server and the client check the same way, beyond llhttp (RFC 9110, 9112).

llhttp (``httptools``) parses every message both sides read, with each of its leniencies off.
What it has no notion of lives here: the limits on a head (its size, its header count, the
length of one header line) that both sides apply, and the syntax of the headers gridctl itself
writes (a header the daemon sends a site is checked before a byte of it is sent).
"""

from __future__ import annotations

import re

# a field name is a token; a field value has no control character but tab. A bare LF or CR
# inside a header would let a message carry another one past the checks (smuggling).
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 9110 section 7.2: Host = uri-host [ ":" port ] (an IP literal, or a reg-name: RFC 3986), maybe empty
HOST = re.compile(r"(?:\[[0-9A-Za-z:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(?::[0-9]*)?")
# what passed HOST or had no control byte, kept: a client sends one Host, a site one reason
# phrase, request after request (a set lookup, not a regex, each time; bounded, filled once)
_GOOD_HOSTS: set[str] = set()
_CLEAN_REASONS: set[bytes] = set()
_SEEN_MAX = 1024
# a longer value is checked each time, never kept: a hostile client or site filling the sets
# with 8 KiB values would hold 8 MiB each; at most 256 chars a value, they hold at most 256 KiB
_SEEN_LEN = 256


def valid_host(host: str) -> bool:
    """Whether a Host header's value matches ``HOST``."""
    if host in _GOOD_HOSTS:
        return True
    if HOST.fullmatch(host) is None:
        return False
    if len(_GOOD_HOSTS) < _SEEN_MAX and len(host) <= _SEEN_LEN:
        _GOOD_HOSTS.add(host)
    return True


def has_control_byte(reason: bytes) -> bool:
    """Whether ``reason`` (a status line's) holds a control byte but tab (``CONTROL_BYTES``)."""
    if reason in _CLEAN_REASONS:
        return False
    if CONTROL_BYTES.search(reason) is not None:
        return True
    if len(_CLEAN_REASONS) < _SEEN_MAX and len(reason) <= _SEEN_LEN:
        _CLEAN_REASONS.add(reason)
    return False


# limits of a head, read by either side (the server's are ServerConfig fields with these defaults)
MAX_HEAD = 64 << 10  # the whole head: start line, header lines (and, after a chunked body, its trailers)
MAX_HEADERS = 100  # header lines in one head (trailers included)
MAX_HEADER_LINE = 8192  # one header's name and value
MAX_TARGET = 8192  # a request's target (RFC 9112 section 3: at least 8000 octets should be supported)

# each leniency llhttp has, off: the parser's default, said here once, for each parser made
STRICT = {
    "lenient_headers": False,
    "lenient_chunked_length": False,
    "lenient_keep_alive": False,
    "lenient_transfer_encoding": False,
    "lenient_version": False,
    "lenient_data_after_close": False,
    "lenient_optional_lf_after_cr": False,
    "lenient_optional_cr_before_lf": False,
    "lenient_optional_crlf_after_chunk": False,
    "lenient_spaces_after_chunk_size": False,
}


def parse_codings(value: str) -> list[str]:
    """The transfer codings a Transfer-Encoding value lists, lower-case, empty list members
    ignored (RFC 9110 section 5.6.1). Either side accepts ``["chunked"]`` alone."""
    return [t for t in (p.strip(" \t").lower() for p in value.split(",")) if t]
