"""Paying changes what projects allows, across gateway, billing and projects processes."""

from __future__ import annotations

import io
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from devstack.services import Stack

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "services" / "billing" / "tests"))
import stripe_payloads

pytestmark = pytest.mark.e2e


def _sign_in(client: httpx.Client, sub: str) -> dict[str, str]:
    resp = client.post("/v1/dev/token", json={"sub": sub, "email": "payer@example.com"})
    assert resp.status_code == 200, resp.text
    return {"Authorization": f"Bearer {resp.json()['access_token']}"}


def _deliver(client: httpx.Client, event: dict[str, Any]) -> httpx.Response:
    body = stripe_payloads.encode(event)
    return client.post(
        "/v1/billing/webhooks/stripe",
        content=body,
        headers={
            "Stripe-Signature": stripe_payloads.sign(body),
            "Content-Type": "application/json",
        },
    )


def _wait_for_limit(client: httpx.Client, headers: dict[str, str], limit: int) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    usage: dict[str, Any] = {}
    while time.monotonic() < deadline:
        usage = client.get("/v1/me", headers=headers).json().get("usage") or {}
        if usage.get("limit") == limit:
            return usage
        time.sleep(0.1)
    raise AssertionError(f"allowance did not become {limit} within 30 s: {usage}")


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (180, 170, 160)).save(buf, "JPEG")
    return buf.getvalue()


class TestUpgrade:
    """A Stripe subscription raises the allowance projects enforces; cancelling lowers it."""

    def test_upgrading_in_billing_changes_the_allowance_projects_enforces(
        self, stack: Stack
    ) -> None:
        with httpx.Client(base_url=stack.url("gateway"), timeout=30) as client:
            payer = _sign_in(client, f"dev|payer-{uuid.uuid4().hex[:6]}")
            me = client.get("/v1/me", headers=payer).json()
            assert me["usage"]["limit"] == 5
            project = client.post("/v1/projects", json={"name": "Big"}, headers=payer).json()
            keys = [
                client.post(
                    "/v1/uploads",
                    files={"file": (f"r{i}.jpg", _jpeg(), "image/jpeg")},
                    headers=payer,
                ).json()["key"]
                for i in range(6)
            ]
            items = [{"key": k, "room_type": "office", "style": "industrial"} for k in keys]
            refused = client.post(
                f"/v1/projects/{project['id']}/images/batch", json={"images": items}, headers=payer
            )
            assert refused.status_code == 402, refused.text

            customer = stripe_payloads.Customer(user_id=uuid.UUID(me["id"]))
            now = int(time.time())
            checkout = customer.checkout_completed(now - 2)
            subscribed = customer.subscription_event("created", now - 1, "price_e2e_pro")
            for event in (checkout, subscribed):
                delivered = _deliver(client, event)
                assert delivered.status_code == 200, delivered.text
            assert _deliver(client, subscribed).json()["status"] == "duplicate"

            usage = _wait_for_limit(client, payer, 100)
            assert usage["plan"] == "pro"
            accepted = client.post(
                f"/v1/projects/{project['id']}/images/batch", json={"images": items}, headers=payer
            )
            assert accepted.status_code == 201, accepted.text

            cancelled = customer.subscription_event(
                "deleted", now + 1, "price_e2e_pro", status="canceled", canceled_at=now + 1
            )
            assert _deliver(client, cancelled).status_code == 200
            assert _wait_for_limit(client, payer, 5)["plan"] == "free"

    def test_unsigned_or_forged_webhooks_are_refused(self, stack: Stack) -> None:
        customer = stripe_payloads.Customer()
        body = stripe_payloads.encode(customer.checkout_completed(int(time.time())))
        with httpx.Client(base_url=stack.url("gateway"), timeout=30) as client:
            unsigned = client.post("/v1/billing/webhooks/stripe", content=body)
            forged = client.post(
                "/v1/billing/webhooks/stripe",
                content=body,
                headers={"Stripe-Signature": stripe_payloads.sign(body, secret="whsec_wrong")},
            )
            stale = client.post(
                "/v1/billing/webhooks/stripe",
                content=body,
                headers={
                    "Stripe-Signature": stripe_payloads.sign(body, at=int(time.time()) - 3600)
                },
            )
        assert (unsigned.status_code, forged.status_code, stale.status_code) == (400, 400, 400)

    def test_checkout_without_stripe_keys_is_a_clear_503(self, stack: Stack) -> None:
        with httpx.Client(base_url=stack.url("gateway"), timeout=30) as client:
            user = _sign_in(client, f"dev|nokey-{uuid.uuid4().hex[:6]}")
            resp = client.post("/v1/billing/checkout", json={"plan": "pro"}, headers=user)
        assert resp.status_code == 503
        assert "not configured" in resp.json()["message"].lower()
