"""Errors raised by the SIP layer."""

from __future__ import annotations


class SipParseError(Exception):
    """A message (or part of one) does not follow the RFC 3261 grammar or our size limits.

    ``status`` is the response a server should send for a request that fails this way
    (400 by default; 416 for an unsupported URI scheme, 505 for a bad SIP version, 413 for a
    message over the size limit). ``reason`` is a short human phrase used as the reason phrase.
    For a response, or on UDP when the message cannot even be answered, the caller drops it.
    """

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class TransactionError(Exception):
    """A transaction-layer operation was used in a state that does not allow it."""
