"""HTTP/1.1 syntax that the server and the client check the same way (RFC 9110, 9112)."""

from __future__ import annotations

import re
from collections.abc import Callable

# a field name is a token; a field value has no control character but tab. A bare LF or CR
# inside a header would let a message carry another one past the checks (smuggling).
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


class ChunkError(Exception):
    """A chunked body that is not well formed. ``kind``: "line" (a size line too long or never
    ending), "size" (not hex digits), "crlf" (data not followed by CRLF), "trailers" (too long)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class ChunkedDecoder:
    """Decodes a chunked body as it arrives: ``feed`` moves the data of what the buffer holds
    into ``out`` and consumes it, remembering where it stands between calls, so every byte is
    parsed once (deleting from the buffer's front per chunk would be quadratic)."""

    __slots__ = ("left", "trailers", "done", "framing")

    def __init__(self) -> None:
        self.left = 0  # > 0: data bytes left in this chunk; -2: its CRLF next; 0: a size line next
        self.trailers = False  # past the last chunk: trailer lines up to an empty one
        self.done = False
        self.framing = 0  # bytes of size lines (extensions included) and CRLFs so far

    def feed(
        self,
        buf: bytearray,
        out: bytearray,
        max_line: int,
        max_trailers: int,
        on_size: Callable[[int], None] | None = None,
    ) -> None:
        """Consume ``buf`` up to the end of the body or of what has arrived. ``on_size`` sees each
        chunk's size before its data is read (and may raise to refuse it). Raises ChunkError."""
        pos = 0
        try:
            while not self.done:
                if self.left > 0:  # inside a chunk's data
                    n = min(self.left, len(buf) - pos)
                    if n <= 0:
                        return
                    out += buf[pos : pos + n]
                    pos += n
                    self.left -= n
                    if self.left == 0:
                        self.left = -2
                    continue
                if self.left == -2:  # the CRLF after a chunk's data
                    if len(buf) - pos < 2:
                        return
                    if buf[pos : pos + 2] != b"\r\n":
                        raise ChunkError("crlf")
                    pos += 2
                    self.left = 0
                    continue
                eol = buf.find(b"\r\n", pos)
                if self.trailers:
                    if eol < 0:
                        if len(buf) - pos > max_trailers:
                            raise ChunkError("trailers")
                        return
                    self.done, pos = eol == pos, eol + 2  # an empty line ends the body
                    continue
                if eol < 0 or eol - pos > max_line:
                    if len(buf) - pos > max_line:
                        raise ChunkError("line")
                    return
                size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
                if not size_text or not _HEX_DIGITS.issuperset(size_text):  # int() takes "-3", "0x5", "1_0"
                    raise ChunkError("size")
                size = int(size_text, 16)
                self.framing += eol - pos + 4  # the whole size line and the data's CRLF
                pos = eol + 2
                if size == 0:
                    self.trailers = True
                    continue
                if on_size is not None:
                    on_size(size)
                self.left = size
        finally:
            del buf[:pos]  # once per call
