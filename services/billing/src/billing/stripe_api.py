"""The calls billing makes to Stripe's API, through the official client."""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import stripe

from billing.errors import PaymentProviderError
from billing.settings import BillingSettings

logger = logging.getLogger(__name__)


def idempotency_key(purpose: str, user_id: uuid.UUID, *parts: object) -> str:
    """A key that is the same whenever the same user repeats the same write."""
    digest = hashlib.sha256("|".join([purpose, str(user_id), *map(str, parts)]).encode())
    return f"rs-{purpose}-{digest.hexdigest()[:40]}"


def time_bucket(window_seconds: int, now: float | None = None) -> int:
    """The current slot of `window_seconds`: retries within it reuse the same key."""
    return int((now if now is not None else time.time()) // max(window_seconds, 1))


@asynccontextmanager
async def _stripe_call(action: str) -> AsyncIterator[None]:
    """Turn any Stripe failure into a 502 that says what could not be done."""
    try:
        yield
    except stripe.StripeError as exc:
        status = exc.http_status
        logger.warning("stripe %s failed (%s): %s", action, status, exc.user_message or exc)
        if isinstance(exc, stripe.RateLimitError):
            message = f"Stripe is busy and could not {action}; try again in a moment."
        elif isinstance(exc, stripe.APIConnectionError):
            message = f"Stripe could not be reached to {action}; try again in a moment."
        else:
            message = f"Stripe could not {action}; try again later."
        raise PaymentProviderError(
            message, details={"stripe_status": status, "stripe_code": exc.code}
        ) from exc


class StripeApi:
    """The few Stripe writes and reads billing needs, each with an idempotency key."""

    def __init__(self, settings: BillingSettings) -> None:
        assert settings.stripe_secret_key is not None
        self._http = stripe.HTTPXClient(timeout=settings.stripe_timeout_seconds)
        base = {"api": settings.stripe_api_base} if settings.stripe_api_base else None
        self.client = stripe.StripeClient(
            settings.stripe_secret_key.get_secret_value(),
            base_addresses=base,  # type: ignore[arg-type]
            http_client=self._http,
            max_network_retries=settings.stripe_max_network_retries,
        )

    async def close(self) -> None:
        """Close the HTTP connection pool."""
        await self._http.close_async()  # type: ignore[no-untyped-call]

    async def create_customer(self, user_id: uuid.UUID, email: str | None, key: str) -> str:
        """Create the user's customer; the same key returns the same customer."""
        params: dict[str, Any] = {"metadata": {"user_id": str(user_id)}}
        if email:
            params["email"] = email
        async with _stripe_call("create your billing account"):
            customer = await self.client.v1.customers.create_async(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": key},
            )
        return str(customer.id)

    async def create_checkout_session(self, params: dict[str, Any], key: str) -> str:
        """A subscription-mode Checkout Session; its URL."""
        async with _stripe_call("start the checkout"):
            session = await self.client.v1.checkout.sessions.create_async(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": key},
            )
        if not session.url:
            raise PaymentProviderError("Stripe returned a checkout session without a URL.")
        return str(session.url)

    async def create_portal_session(self, customer_id: str, return_url: str, key: str) -> str:
        """A billing portal session for the customer; its URL."""
        async with _stripe_call("open the billing portal"):
            session = await self.client.v1.billing_portal.sessions.create_async(
                params={"customer": customer_id, "return_url": return_url},
                options={"idempotency_key": key},
            )
        return str(session.url)

    async def list_subscriptions(self, customer_id: str) -> list[dict[str, Any]]:
        """Every subscription of a customer, whatever its status, as plain JSON objects."""
        found: list[dict[str, Any]] = []
        async with _stripe_call("list the subscriptions"):
            page = await self.client.v1.subscriptions.list_async(
                params={"customer": customer_id, "status": "all", "limit": 100}
            )
            async for sub in page.auto_paging_iter():
                found.append(sub.to_dict())
        return found
