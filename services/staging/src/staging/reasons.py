"""Failures in two voices: a catalogue sentence for the owner, the technical detail for us."""

from __future__ import annotations

from contracts.reasons import FailureReason
from servicekit.messaging import is_infrastructure_error

DETAIL_MAX = 2000


class Failure(Exception):
    """A failure that knows what its owner reads; `str()` is the detail for logs and admins."""

    reason: FailureReason = FailureReason.INTERNAL

    def __init__(self, detail: str, *, reason: FailureReason | None = None) -> None:
        super().__init__(detail)
        if reason is not None:
            self.reason = reason


def reason_for(exc: BaseException) -> FailureReason:
    """The catalogue sentence for any exception a job can end with."""
    if isinstance(exc, Failure):
        return exc.reason
    if is_infrastructure_error(exc):
        return FailureReason.SERVICE_BUSY
    return FailureReason.INTERNAL


def detail_of(exc: BaseException) -> str:
    """The technical detail of a failure, for logs and the admin job view only."""
    return f"{type(exc).__name__}: {exc}"[:DETAIL_MAX]
