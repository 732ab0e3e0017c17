"""TLS contexts: the daemon's listener (its certificate, and client certificates when asked) and
the connections to sites (a private CA, a client certificate).

Files only, never key material in memory from elsewhere: each builder reads PEM files and
returns an ``ssl.SSLContext``, or raises :class:`TlsFileError` naming the file and why.

- :func:`load_server_context`: TLS 1.2 or later; with ``client_ca`` every client must show a
  certificate signed by it (mutual TLS).
- :class:`RotatingContext`: what the listener is given. Each new connection is wrapped by the
  context last loaded (``current``), so a SIGHUP swaps the certificate, key or client CA for new
  connections without a restart; connections already open keep theirs.
- :func:`load_client_context`: toward a site: verified against ``ca`` alone when given (a private
  PKI: the system's store is not trusted beside it), else the system's store; ``cert``/``key``
  the client certificate a site asks for. Cached by the files' identity (path, size, mtime), so
  one context serves every site that names the same files, and a changed file gives a new one.
"""

from __future__ import annotations

import os
import ssl
import threading
from typing import Any


class TlsFileError(Exception):
    """A certificate, key or CA file that cannot be used: the message names it and says why."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc).replace("_", " ").lower()
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _readable(path: str, what: str) -> None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError as exc:
        raise TlsFileError(f"{what} {path}: {_reason(exc)}") from None
    if b"-----BEGIN " not in head:
        raise TlsFileError(f"{what} {path}: not a PEM file (no '-----BEGIN' line)")


def _load_chain(context: ssl.SSLContext, cert: str, key: str | None, what: str) -> None:
    _readable(cert, f"{what} certificate")
    if key is not None:
        _readable(key, f"{what} key")
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        files = cert if key is None else f"{cert} with key {key}"
        hint = " (does the key belong to the certificate?)" if "mismatch" in _reason(exc) else ""
        raise TlsFileError(f"{what} certificate {files}: {_reason(exc)}{hint}") from None


def _load_ca(context: ssl.SSLContext, ca: str, what: str) -> None:
    _readable(ca, what)
    try:
        context.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise TlsFileError(f"{what} {ca}: {_reason(exc)}") from None


def load_server_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """The listener's context: its certificate chain and key; with ``client_ca``, mutual TLS."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, cert, key, "--tls-cert")
    if client_ca is not None:
        _load_ca(context, client_ca, "--tls-client-ca")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class RotatingContext(ssl.SSLContext):
    """A listener's context whose certificates can be replaced while it serves: asyncio's and
    uvloop's TLS transports call ``wrap_bio`` once per accepted connection, and this hands the
    call to ``current``."""

    current: ssl.SSLContext

    def __new__(cls, current: ssl.SSLContext) -> RotatingContext:
        self = super().__new__(cls, ssl.PROTOCOL_TLS_SERVER)
        self.current = current
        return self

    def __init__(self, current: ssl.SSLContext) -> None:  # the protocol went to __new__
        pass

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        return self.current.wrap_bio(*args, **kwargs)


_cache: dict[tuple[Any, ...], ssl.SSLContext] = {}
_lock = threading.Lock()


def _identity(path: str | None) -> tuple[Any, ...]:
    if path is None:
        return (None,)
    try:
        st = os.stat(path)
    except OSError:
        return (path, None)
    return (path, st.st_ino, st.st_size, st.st_mtime_ns)


def load_client_context(
    ca: str | None = None, cert: str | None = None, key: str | None = None
) -> ssl.SSLContext | None:
    """The context for sites that name these files; None when they name none (the caller's
    default: the system's store). Raises :class:`TlsFileError`."""
    if ca is None and cert is None:
        return None
    files = (_identity(ca), _identity(cert), _identity(key))
    with _lock:
        hit = _cache.get(files)
    if hit is not None:
        return hit
    if ca is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # hostname checked, certificate required
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_ca(context, ca, "tls_ca")
    else:
        context = ssl.create_default_context()
    if cert is not None:
        _load_chain(context, cert, key, "tls_cert")
    with _lock:
        if len(_cache) > 256:  # files rotated many times over: forget the old ones
            _cache.clear()
        return _cache.setdefault(files, context)
