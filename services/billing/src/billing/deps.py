"""FastAPI dependencies of the billing service."""

from __future__ import annotations

import json
from typing import Annotated, Any

import stripe
from fastapi import Depends, Request

from billing.errors import InvalidWebhook
from billing.payments import PaymentsService
from billing.service import BillingService
from billing.settings import BillingSettings
from billing.stripe_api import StripeApi
from servicekit.errors import NotFound
from servicekit.logs import request_id_var
from servicekit.runtime import RuntimeDep, SessionDep


def get_settings(request: Request) -> BillingSettings:
    """The service settings."""
    settings: BillingSettings = request.app.state.settings
    return settings


def get_stripe(request: Request) -> StripeApi | None:
    """The Stripe client, or None when no secret key is configured."""
    api: StripeApi | None = getattr(request.app.state, "stripe", None)
    return api


SettingsDep = Annotated[BillingSettings, Depends(get_settings)]
StripeDep = Annotated[StripeApi | None, Depends(get_stripe)]


def get_billing(session: SessionDep, settings: SettingsDep) -> BillingService:
    """Billing rules bound to this request's unit of work."""
    return BillingService(session, settings, correlation_id=request_id_var.get())


def get_payments(runtime: RuntimeDep, settings: SettingsDep, api: StripeDep) -> PaymentsService:
    """The Stripe round trips of this request."""
    return PaymentsService(runtime, settings, api)


BillingDep = Annotated[BillingService, Depends(get_billing)]
PaymentsDep = Annotated[PaymentsService, Depends(get_payments)]


WEBHOOK_MAX_BYTES = 1024 * 1024
"""Stripe's events are a few kilobytes; a larger body is refused before it is read."""


def _too_large() -> InvalidWebhook:
    return InvalidWebhook(
        "The webhook body is too large (the limit is 1 MiB).",
        code="payload_too_large",
        status=413,
        details={"max_bytes": WEBHOOK_MAX_BYTES},
    )


async def capped_body(request: Request) -> bytes:
    """The raw body, refused (413) as soon as it is known to pass `WEBHOOK_MAX_BYTES`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidWebhook("Content-Length is not valid.", code="invalid_payload")
        if int(declared) > WEBHOOK_MAX_BYTES:
            raise _too_large()
    body = bytearray()
    # A chunked body declares no size: count it as it arrives (at most one chunk past the cap).
    async for chunk in request.stream():
        body += chunk
        if len(body) > WEBHOOK_MAX_BYTES:
            raise _too_large()
    return bytes(body)


async def verified_stripe_event(request: Request, settings: SettingsDep) -> dict[str, Any]:
    """The Stripe event in the raw body, once its signature and timestamp check out."""
    if settings.stripe_webhook_secret is None:
        # No secret, no endpoint: unsigned events are never accepted.
        raise NotFound("Not Found")
    payload = await capped_body(request)
    signature = request.headers.get("stripe-signature")
    if not signature:
        raise InvalidWebhook("The Stripe-Signature header is missing.", code="invalid_signature")
    try:
        stripe.Webhook.construct_event(
            payload,
            signature,
            settings.stripe_webhook_secret.get_secret_value(),
            tolerance=settings.webhook_tolerance_seconds,
        )
    except stripe.SignatureVerificationError as exc:
        raise InvalidWebhook(
            "The Stripe signature does not match or is too old.",
            code="invalid_signature",
            details={"reason": str(exc.user_message or exc)},
        ) from exc
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        # Not JSON, not UTF-8, or JSON that is not an event object.
        raise InvalidWebhook("The webhook body is not valid JSON.", code="invalid_payload") from exc
    event = json.loads(payload)
    data = event.get("data") if isinstance(event, dict) else None
    if not (
        isinstance(event, dict)
        and isinstance(event.get("id"), str)
        and isinstance(event.get("type"), str)
        and isinstance(event.get("created"), int)
        and isinstance(data, dict)
        and isinstance(data.get("object"), dict)
    ):
        raise InvalidWebhook("The webhook body is not a Stripe event.", code="invalid_payload")
    return event


StripeEventDep = Annotated[dict[str, Any], Depends(verified_stripe_event)]
