"""The HTTP client's errors: :class:`UpstreamError` and its kinds, so that a caller tells a
dead site (``ConnectError``, ``Disconnected``) from a slow one (``UpstreamTimeout``) and from
one that does not speak HTTP (``ProtocolError``)."""

from __future__ import annotations


class UpstreamError(Exception):
    """The site could not be reached, or broke off, or answered what is not HTTP."""


class ConnectError(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    pass


class ProtocolError(UpstreamError):
    pass


class AnswerTooLarge(ProtocolError):
    """A body read whole was over the caller's limit (nothing more of it is read)."""


class Disconnected(UpstreamError):
    """The connection closed before the response (or its body) was complete."""


class ClosedBeforeAnswer(Disconnected):
    """Closed before a byte of the answer (``after`` seconds after the request was written)."""

    def __init__(self, message: str, after: float) -> None:
        super().__init__(message)
        self.after = after
