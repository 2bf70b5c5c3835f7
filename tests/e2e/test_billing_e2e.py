"""Paying changes what projects allows, across gateway, billing and projects processes."""

from __future__ import annotations

import io
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from devstack.services import SERVICES, Stack
from servicekit.testing import InfraUrls, pinned_environment, private_vhost

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


FREE_LIMIT = 2
PRO_LIMIT = 6
GRACE_SECONDS = 10
CYCLE_ENV = {
    "BILLING_STRIPE_WEBHOOK_SECRET": stripe_payloads.WEBHOOK_SECRET,
    "BILLING_PRICE_PRO": "price_cycle_pro",
    "BILLING_PRICE_BUSINESS": "price_cycle_business",
    "BILLING_LIMIT_FREE": str(FREE_LIMIT),
    "BILLING_LIMIT_PRO": str(PRO_LIMIT),
    "BILLING_RENEWAL_GRACE_SECONDS": str(GRACE_SECONDS),
    "BILLING_ENTITLEMENT_SWEEP_SECONDS": "1",
    # Lower than billing's free plan, so the test sees billing's announcement take over.
    "PROJECTS_DEFAULT_MONTHLY_LIMIT": "1",
}
"""Billing on scaled time: a renewal grace of seconds; small plans so limits are reached."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def cycle_stack(infra: InfraUrls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own whose billing runs on scaled time."""
    with (
        private_vhost(infra.amqp_url) as amqp_url,
        pinned_environment(
            {
                "DEVSTACK_PG_URL": infra.pg_base_url,
                "DEVSTACK_AMQP_URL": amqp_url,
                "DEVSTACK_S3_ENDPOINT": infra.s3_endpoint,
                "DEVSTACK_S3_ACCESS_KEY": infra.s3_access_key,
                "DEVSTACK_S3_SECRET_KEY": infra.s3_secret_key,
            }
        ),
        Stack(
            ports={name: _free_port() for name in SERVICES},
            db_prefix=f"rs_cycle_{uuid.uuid4().hex[:8]}",
            drop_databases_on_exit=True,
            state_dir=tmp_path_factory.mktemp("cycle-stack"),
            extra_env=CYCLE_ENV,
            timeout=120,
        ) as running,
    ):
        yield running


def _until(what: str, check: Callable[[], Any], within: float = 30) -> Any:
    """Poll `check` until it returns something truthy; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within} s")
        time.sleep(0.1)


def _at(moment: float) -> None:
    """Block until the wall clock reaches `moment` (a unix time), polling with a deadline."""
    _until(f"reaching {moment}", lambda: time.time() >= moment, within=moment - time.time() + 5)


class Account:
    """One customer driving the stack through the gateway."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.headers = _sign_in(client, f"dev|cycle-{uuid.uuid4().hex[:8]}")
        me = client.get("/v1/me", headers=self.headers)
        assert me.status_code == 200, me.text
        self.user_id = uuid.UUID(me.json()["id"])
        project = client.post("/v1/projects", json={"name": "Cycle"}, headers=self.headers)
        assert project.status_code == 201, project.text
        self.project_id = project.json()["id"]

    def usage(self) -> dict[str, Any]:
        """`GET /v1/usage`."""
        resp = self.client.get("/v1/usage", headers=self.headers)
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    def wait_usage(self, what: str, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Wait until the usage satisfies `check`."""
        last: dict[str, Any] = {}

        def probe() -> dict[str, Any] | None:
            nonlocal last
            last = self.usage()
            return last if check(last) else None

        try:
            found: dict[str, Any] = _until(what, probe)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last usage: {last}") from None
        return found

    def stage(self, count: int) -> httpx.Response:
        """Upload `count` photos and ask for them to be staged in one batch."""
        keys = []
        for i in range(count):
            up = self.client.post(
                "/v1/uploads",
                files={"file": (f"room{i}.jpg", _jpeg(), "image/jpeg")},
                headers=self.headers,
            )
            assert up.status_code in (200, 201), up.text
            keys.append(up.json()["key"])
        items = [{"key": k, "room_type": "bedroom", "style": "coastal"} for k in keys]
        return self.client.post(
            f"/v1/projects/{self.project_id}/images/batch",
            json={"images": items},
            headers=self.headers,
        )

    def deliver(self, event: dict[str, Any]) -> str:
        """A signed Stripe webhook; billing's verdict."""
        resp = _deliver(self.client, event)
        assert resp.status_code == 200, resp.text
        status: str = resp.json()["status"]
        return status


def _moment(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


class TestBillingCycle:
    """Subscribe, use, a period rollover with a late renewal, cancel: never refused while paid."""

    def test_a_full_billing_cycle_with_a_late_renewal(self, cycle_stack: Stack) -> None:
        with httpx.Client(base_url=cycle_stack.url("gateway"), timeout=30) as client:
            payer = Account(client)
            # Billing announces the free plan when the gateway reports a new user.
            free = payer.wait_usage("free plan announced", lambda u: u["limit"] == FREE_LIMIT)
            assert free["plan"] == "free"

            # Subscribe: a period that ends in a few seconds.
            now = int(time.time())
            customer = stripe_payloads.Customer(
                user_id=payer.user_id, period_start=now - 5, period_seconds=25
            )
            end = customer.period_end
            assert payer.deliver(customer.checkout_completed(now - 1)) == "processed"
            assert payer.deliver(customer.subscription_event("created", now, "price_cycle_pro"))
            paid = payer.wait_usage("pro plan in force", lambda u: u["limit"] == PRO_LIMIT)
            assert (paid["plan"], _moment(paid["period_end"])) == ("pro", end)

            # Use: four photos of six.
            used = payer.stage(4)
            assert used.status_code == 201, used.text
            assert payer.usage()["used"] == 4
            assert payer.stage(3).status_code == 402

            # The period ends and Stripe's renewal is late: the paid plan holds, counted afresh
            # from the old end, and the customer is never refused.
            _at(end - 1)
            late_until = end + GRACE_SECONDS / 2
            seen: list[tuple[str, int]] = []
            staged_in_grace = False
            while time.time() < late_until:
                usage = payer.usage()
                seen.append((usage["plan"], usage["limit"]))
                assert (usage["plan"], usage["limit"]) == ("pro", PRO_LIMIT), usage
                if time.time() > end + 1 and not staged_in_grace:
                    assert _moment(usage["period_start"]) == end, usage
                    in_grace = payer.stage(PRO_LIMIT)
                    assert in_grace.status_code == 201, in_grace.text
                    staged_in_grace = True
                time.sleep(0.2)
            assert staged_in_grace
            assert len(seen) > 5

            # The renewal arrives late, inside the grace: the period continues from the old end.
            customer.renew()
            customer.period_seconds = 30 * 86_400
            renewed_at = int(time.time())
            assert (
                payer.deliver(customer.subscription_event("updated", renewed_at, "price_cycle_pro"))
                == "processed"
            )
            invoice = customer.invoice_event(
                "paid",
                renewed_at,
                invoice_id=f"in_{customer.subscription_id}_2",
                status="paid",
                amount_due=2900,
                amount_paid=2900,
                number="RS-CYCLE-2",
                service_period=(customer.period_start, customer.period_end),
            )
            assert payer.deliver(invoice) == "processed"
            renewed = payer.wait_usage(
                "renewed period in force",
                lambda u: _moment(u["period_end"]) == customer.period_end,
            )
            assert (renewed["plan"], renewed["limit"]) == ("pro", PRO_LIMIT)
            assert _moment(renewed["period_start"]) == end
            # What was staged in the grace belongs to the renewed period: it is full.
            assert renewed["used"] == PRO_LIMIT
            assert payer.stage(1).status_code == 402

            # Past the old grace nothing lapses.
            _at(end + GRACE_SECONDS + 2)
            after = payer.usage()
            assert (after["plan"], after["limit"]) == ("pro", PRO_LIMIT), after

            # Cancel: back to free, in a fresh period that does not count the paid photos.
            canceled = int(time.time())
            assert (
                payer.deliver(
                    customer.subscription_event(
                        "deleted", canceled, "price_cycle_pro", "canceled", canceled_at=canceled
                    )
                )
                == "processed"
            )
            back = payer.wait_usage("back to free", lambda u: u["plan"] == "free")
            assert (back["limit"], back["used"]) == (FREE_LIMIT, 0), back
            assert _moment(back["period_start"]) >= canceled
            assert payer.stage(FREE_LIMIT).status_code == 201
            assert payer.stage(1).status_code == 402

            billing = client.get("/v1/billing/subscription", headers=payer.headers).json()
            assert billing["entitlement"]["plan_code"] == "free"
            invoices = client.get("/v1/billing/invoices", headers=payer.headers).json()
            assert [i["invoice_number"] for i in invoices["items"]] == ["RS-CYCLE-2"]
            assert invoices["items"][0]["hosted_invoice_url"]
