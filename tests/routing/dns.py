"""A stand-in DNS server on loopback (UDP), for data planes that resolve site names at run time.

nginx resolves a name at run time only through a ``resolver`` it is given (it never
reads /etc/hosts or /etc/resolv.conf), so the tests give it this one: an A record for
each name in ``names``, no AAAA records (NOERROR, empty), NXDOMAIN for anything else.
``names`` may change while it runs: a site's name that starts resolving later.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

TTL_S = 1  # answers are re-asked soon: a test that changes ``names`` sees it within a second


class StubDns:
    def __init__(self, names: dict[str, str] | None = None) -> None:
        self.names: dict[str, str] = dict(names or {})
        self.asked: list[str] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self.address = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._serve, daemon=True, name="stub-dns")
        self._thread.start()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()

    def _serve(self) -> None:
        while True:
            try:
                query, peer = self._sock.recvfrom(512)
            except OSError:  # closed
                return
            with contextlib.suppress(ValueError, IndexError, struct.error, OSError):
                self._sock.sendto(self._answer(query), peer)

    def _answer(self, query: bytes) -> bytes:
        (ident,) = struct.unpack(">H", query[:2])
        labels, i = [], 12
        while query[i]:
            labels.append(query[i + 1 : i + 1 + query[i]].decode("ascii").lower())
            i += 1 + query[i]
        question = query[12 : i + 5]
        qtype = struct.unpack(">H", query[i + 1 : i + 3])[0]
        name = ".".join(labels)
        self.asked.append(name)
        address = self.names.get(name)
        if address is None:
            return struct.pack(">HHHHHH", ident, 0x8183, 1, 0, 0, 0) + question  # NXDOMAIN
        if qtype != 1:  # the name exists, with no record of that type
            return struct.pack(">HHHHHH", ident, 0x8180, 1, 0, 0, 0) + question
        record = struct.pack(">HHHIH", 0xC00C, 1, 1, TTL_S, 4) + socket.inet_aton(address)
        return struct.pack(">HHHHHH", ident, 0x8180, 1, 1, 0, 0) + question + record
