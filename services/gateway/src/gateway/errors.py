"""Errors the gateway adds to servicekit's: upstream failures and oversized bodies."""

from __future__ import annotations

from servicekit.errors import ServiceError, Unavailable


class UpstreamUnavailable(Unavailable):
    """The part of the product behind this route does not answer."""

    def __init__(self, part: str) -> None:
        super().__init__(
            f"{part} is unavailable right now; please try again shortly.",
            headers={"Retry-After": "5"},
        )


class UpstreamTimeout(ServiceError):
    """The part of the product behind this route took too long."""

    status = 504
    code = "upstream_timeout"

    def __init__(self, part: str) -> None:
        super().__init__(f"{part} took too long to answer; please try again.")


class BadGateway(ServiceError):
    """The part of the product behind this route answered in a way that cannot be relayed."""

    status = 502
    code = "bad_gateway"

    def __init__(self, part: str) -> None:
        super().__init__(f"{part} failed to answer properly; please try again.")


class PayloadTooLarge(ServiceError):
    """The request body is over the gateway's limit."""

    status = 413
    code = "payload_too_large"

    def __init__(self, limit: int) -> None:
        size = f"{limit // 1024 // 1024} MiB" if limit >= 1024 * 1024 else f"{limit} bytes"
        super().__init__(
            f"The request body is too large (the limit is {size}).",
            details={"max_bytes": limit},
        )
