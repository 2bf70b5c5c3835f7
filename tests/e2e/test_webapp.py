"""The web app in a real browser (Debian's headless Chromium) against the running stack."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import secrets
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, ViewportSize, sync_playwright

from devstack.services import Stack
from staging.backends.sample_room import sample_room
from tests.support.stackkit import Api

pytestmark = pytest.mark.e2e

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium (installed by `make test` when missing)."""
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).exists():
        pytest.fail("Chromium is missing: `make test` installs Debian's chromium package")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def _photo(tmp_path: Path, name: str, seed: int) -> str:
    path = tmp_path / name
    buf = io.BytesIO()
    sample_room(900, 600, seed=seed).save(buf, "JPEG", quality=88)
    path.write_bytes(buf.getvalue())
    return str(path)


def _sign_in(page: Page, base: str, email: str) -> None:
    page.goto(base + "/")
    page.fill("input[name=email]", email)
    page.click("#dev-signin button")
    page.wait_for_selector("#new-project")


class TestWebApp:
    """An agent signs in, creates a project, uploads two photos and sees them staged live."""

    def test_upload_and_watch_photos_get_staged(
        self, stack: Stack, browser: Browser, tmp_path: Path
    ) -> None:
        base = stack.url("gateway")
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)

        _sign_in(page, base, f"agent-{uuid.uuid4().hex[:6]}@example.com")
        page.fill("#new-project input[name=name]", "12 Elm Street")
        page.click("#new-project button")
        page.wait_for_selector("#view[data-ready=project]")
        assert page.inner_text("#project-name") == "12 Elm Street"
        page.set_input_files(
            "#files", [_photo(tmp_path, "den.jpg", 1), _photo(tmp_path, "loft.jpg", 2)]
        )
        page.select_option("#room-type", "office")
        page.select_option("#style", "industrial")
        page.click("#stage-button")

        # Status arrives over server-sent events: no reload, no polling in the test.
        page.locator(".status.ready").nth(1).wait_for(timeout=60_000)
        page.locator(".compare img.after").nth(1).wait_for(state="attached", timeout=20_000)
        assert page.locator(".tile").count() == 2
        assert "Office · Industrial" in page.inner_text("#gallery")
        assert "2 of 5 photos" in page.inner_text("#usage")
        assert problems == []
        page.close()

    def test_a_bad_file_gets_a_clear_message(
        self, stack: Stack, browser: Browser, tmp_path: Path
    ) -> None:
        page = browser.new_page()
        _sign_in(page, stack.url("gateway"), f"agent-{uuid.uuid4().hex[:6]}@example.com")
        page.fill("#new-project input[name=name]", "Bad files")
        page.click("#new-project button")
        page.wait_for_selector("#view[data-ready=project]")
        text_file = tmp_path / "notes.jpg"
        text_file.write_text("these are my notes, not a photo")
        page.set_input_files("#files", [str(text_file)])
        page.click("#stage-button")
        page.locator("#project-error").filter(has_text="not a JPEG").wait_for(timeout=15_000)
        assert page.locator(".tile").count() == 0
        page.close()


ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
"""Screenshots of the pages as the browser drew them (gitignored), for a person to look at."""

PHONE: ViewportSize = {"width": 390, "height": 844}
ALLOWED_CONSOLE_ERRORS = ("status of 503",)
"""Chromium logs every non-2xx fetch; the 503 of checkout and portal without Stripe is expected."""


def _screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _watch(page: Page) -> list[str]:
    """Page errors and console errors, except the expected 503s."""
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))

    def console(message: ConsoleMessage) -> None:
        if message.type == "error" and not any(a in message.text for a in ALLOWED_CONSOLE_ERRORS):
            problems.append(message.text)

    page.on("console", console)
    return problems


def _stripe_event(event_type: str, obj: dict[str, Any]) -> dict[str, Any]:
    created = int(time.time())
    return {
        "id": f"evt_{secrets.token_hex(12)}",
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": created,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


@dataclass
class _Customer:
    """One user's Stripe objects, delivered as signed webhooks through the gateway."""

    stack: Stack
    api: Api
    user_id: str
    customer: str = field(default_factory=lambda: f"cus_{secrets.token_hex(7)}")
    subscription: str = field(default_factory=lambda: f"sub_{secrets.token_hex(12)}")

    def deliver(self, event_type: str, obj: dict[str, Any]) -> None:
        """POST an event signed as Stripe signs: HMAC-SHA256 of "t.payload" under the secret."""
        secret = self.stack.extra_env["BILLING_STRIPE_WEBHOOK_SECRET"]
        body = json.dumps(_stripe_event(event_type, obj)).encode()
        t = int(time.time())
        mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
        resp = self.api.client.post(
            "/v1/billing/webhooks/stripe",
            content=body,
            headers={"Stripe-Signature": f"t={t},v1={mac}", "Content-Type": "application/json"},
        )
        assert resp.status_code == 200, resp.text

    @property
    def metadata(self) -> dict[str, str]:
        """What our checkout puts on Stripe's objects."""
        return {"user_id": self.user_id, "plan": "pro"}

    def subscribe(
        self, *, start: int, end: int, status: str = "active", cancel_at_period_end: bool = False
    ) -> None:
        """A completed checkout, then the Pro subscription it created."""
        checkout = {
            "id": f"cs_test_{secrets.token_hex(12)}",
            "object": "checkout.session",
            "client_reference_id": self.user_id,
            "customer": self.customer,
            "metadata": self.metadata,
            "mode": "subscription",
            "payment_status": "paid",
            "status": "complete",
            "subscription": self.subscription,
            "created": start,
        }
        item = {
            "id": f"si_{secrets.token_hex(8)}",
            "object": "subscription_item",
            "price": {
                "id": self.stack.extra_env["BILLING_PRICE_PRO"],
                "object": "price",
                "currency": "usd",
            },
            "quantity": 1,
            "subscription": self.subscription,
            "current_period_start": start,
            "current_period_end": end,
        }
        sub = {
            "id": self.subscription,
            "object": "subscription",
            "customer": self.customer,
            "status": status,
            "cancel_at": None,
            "cancel_at_period_end": cancel_at_period_end,
            "canceled_at": None,
            "created": start,
            "items": {"object": "list", "data": [item], "has_more": False},
            "metadata": self.metadata,
            "livemode": False,
        }
        self.deliver("checkout.session.completed", checkout)
        self.deliver("customer.subscription.created", sub)

    def paid_invoice(self, number: str, cents: int) -> str:
        """A paid invoice of the subscription, with Stripe's hosted page; returns its id."""
        invoice_id = f"in_{secrets.token_hex(12)}"
        invoice = {
            "id": invoice_id,
            "object": "invoice",
            "customer": self.customer,
            "status": "paid",
            "amount_due": cents,
            "amount_paid": cents,
            "amount_remaining": 0,
            "currency": "usd",
            "number": number,
            "billing_reason": "subscription_create",
            "hosted_invoice_url": f"https://invoice.stripe.test/i/{invoice_id}",
            "livemode": False,
            "parent": {
                "type": "subscription_details",
                "subscription_details": {
                    "subscription": self.subscription,
                    "metadata": self.metadata,
                },
            },
        }
        self.deliver("invoice.paid", invoice)
        return invoice_id


def _day(moment: datetime) -> str:
    """A date as the page writes it in en-US: `Dec 30, 2026`."""
    return f"{moment:%b} {moment.day}, {moment:%Y}"


def _wait_for(condition: Callable[[], bool], what: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {within} s")
        time.sleep(0.1)


class TestBillingPage:
    """Plan, usage, upgrade, the portal and invoices, as a customer sees them."""

    def test_a_subscriber_sees_plan_usage_and_invoices(
        self, stack: Stack, browser: Browser
    ) -> None:
        base = stack.url("gateway")
        email = f"payer-{uuid.uuid4().hex[:6]}@example.com"
        page = browser.new_page(
            viewport={"width": 1280, "height": 900}, locale="en-US", timezone_id="UTC"
        )
        problems = _watch(page)
        _sign_in(page, base, email)
        with Api(base) as api:
            auth = api.sign_in(f"dev|{email}")
            user_id = api.client.get("/v1/me", headers=auth).json()["id"]
            project = api.project(auth, "Billing house")
            photo = io.BytesIO()
            sample_room(640, 420, seed=7).save(photo, "JPEG", quality=85)
            # A JPEG cut in half passes the upload's type check and fails in staging: our
            # failure, so it must not be charged.
            images: dict[str, str] = {}
            for name, data in (("good", photo.getvalue()), ("cut", photo.getvalue()[:4000])):
                created = api.create_image(auth, project, api.upload_key(auth, data))
                assert created.status_code == 201, created.text
                images[name] = created.json()["id"]
            settled = api.wait_settled(auth, images.values(), within=60)
            assert settled[images["cut"]]["status"] == "error"
            assert settled[images["cut"]]["charge"] == "released"
            stripe = _Customer(stack, api, user_id)
            period_end = int(time.time()) + 29 * 86_400
            stripe.subscribe(
                start=period_end - 30 * 86_400, end=period_end, cancel_at_period_end=True
            )
            number = f"RS-{secrets.token_hex(3).upper()}"
            invoice_id = stripe.paid_invoice(number, 2900)
            _wait_for(
                lambda: api.client.get("/v1/usage", headers=auth).json()["limit"] == 100,
                "projects did not learn the Pro allowance",
            )
            usage = api.client.get("/v1/usage", headers=auth).json()
            invoices = api.client.get("/v1/billing/invoices", headers=auth).json()["items"]

        # Reach the page by keyboard from the header, as a person without a mouse would.
        page.goto(base + "/#/")
        page.wait_for_selector("#new-project")
        page.focus("#billing-link")
        page.keyboard.press("Enter")
        page.wait_for_selector("#view[data-ready=billing]")
        assert page.inner_text("#plan-name") == "Pro"
        ends = datetime.fromtimestamp(period_end, UTC)
        assert page.inner_text("#plan-status") == f"Cancels on {_day(ends)}"
        assert "moves to the free plan" in page.inner_text("#plan-detail")
        assert page.locator("#manage-billing").is_visible()
        assert page.locator("button.upgrade[data-plan=business]").is_visible()

        legend = dict(
            page.eval_on_selector_all(
                "#usage-legend li",
                "lis => lis.map(li => [li.dataset.key, li.querySelector('strong').textContent])",
            )
        )
        assert (usage["staged"], usage["failed"], usage["in_flight"]) == (1, 1, 0)
        assert legend == {"staged": "1", "flight": "0", "failed": "1", "left": "99"}
        summary = page.get_attribute("#usage-bar", "aria-label") or ""
        assert "1 of 100 photos used" in summary
        assert "1 failed and not charged" in summary
        filled = page.eval_on_selector(
            "#usage-bar", "bar => [...bar.children].reduce((w, s) => w + s.offsetWidth, 0)"
        )
        assert filled > 0

        row = page.locator("#invoice-rows tr").filter(has_text=number)
        assert row.count() == 1
        assert "$29.00" in row.inner_text()
        assert "Paid" in row.inner_text()
        link = row.locator("a")
        assert link.get_attribute("href") == invoices[0]["hosted_invoice_url"]
        assert link.get_attribute("href") == f"https://invoice.stripe.test/i/{invoice_id}"
        assert link.get_attribute("target") == "_blank"
        _screenshot(page, "billing-subscriber-desktop")
        page.set_viewport_size(PHONE)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page scrolls sideways by {overflow}px on a phone"
        _screenshot(page, "billing-subscriber-phone")
        page.set_viewport_size({"width": 1280, "height": 900})

        # Without a Stripe key the portal answers 503: the message is shown, the page stays.
        page.click("#manage-billing")
        page.locator("#billing-error").filter(has_text="not configured").wait_for()
        assert page.locator("#manage-billing").is_enabled()

        # The failed photo's tile says it was not charged; the staged one says nothing.
        page.goto(f"{base}/#/projects/{project}")
        page.wait_for_selector("#view[data-ready=project]")
        failed = page.locator(".tile").filter(has=page.locator(".status.error"))
        failed.locator(".charge").wait_for()
        assert failed.locator(".charge").inner_text() == "Not charged"
        assert page.locator(".charge").count() == 1
        _screenshot(page, "project-not-charged-desktop")
        assert problems == []
        page.close()

    @pytest.mark.parametrize(
        ("status", "ends_in_hours", "badge", "phrase", "until"),
        [
            ("trialing", 24 * 14, "Trial", "Your trial runs until", "period_end"),
            ("past_due", 24, "Past due", "stays active until", "period_end"),
            ("active", -1, "Renewal pending", "stays in force until", "renewal_grace_until"),
        ],
    )
    def test_the_plan_status_says_what_billing_knows(
        self,
        stack: Stack,
        browser: Browser,
        status: str,
        ends_in_hours: int,
        badge: str,
        phrase: str,
        until: str,
    ) -> None:
        base = stack.url("gateway")
        email = f"{status}-{uuid.uuid4().hex[:6]}@example.com"
        page = browser.new_page(locale="en-US", timezone_id="UTC")
        problems = _watch(page)
        _sign_in(page, base, email)
        with Api(base) as api:
            auth = api.sign_in(f"dev|{email}")
            user_id = api.client.get("/v1/me", headers=auth).json()["id"]
            end = int(time.time()) + ends_in_hours * 3600
            stripe = _Customer(stack, api, user_id)
            stripe.subscribe(start=end - 30 * 86_400, end=end, status=status)
            billing = api.client.get("/v1/billing/subscription", headers=auth).json()
        # Billing's own view is updated by the webhook itself: no event to wait for.
        entitlement = billing["entitlement"]
        assert (entitlement["plan_code"], entitlement["status"]) == ("pro", status)
        page.goto(base + "/#/billing")
        page.wait_for_selector("#view[data-ready=billing]")
        assert page.inner_text("#plan-status") == badge
        moment = datetime.fromisoformat(entitlement[until]).astimezone(UTC)
        assert f"{phrase} {_day(moment)}" in page.inner_text("#plan-detail")
        _screenshot(page, f"billing-{status}-desktop")
        assert problems == []
        page.close()

    def test_checkout_without_stripe_shows_the_message_on_a_phone(
        self, stack: Stack, browser: Browser
    ) -> None:
        base = stack.url("gateway")
        page = browser.new_page(viewport=PHONE, is_mobile=True, has_touch=True)
        problems = _watch(page)
        _sign_in(page, base, f"free-{uuid.uuid4().hex[:6]}@example.com")
        _screenshot(page, "projects-phone")
        page.click("#upgrade")
        page.wait_for_selector("#view[data-ready=billing]")
        assert page.inner_text("#plan-status") == "Free"
        assert page.locator("#invoices").is_hidden()
        assert page.inner_text("#no-invoices") == "No invoices yet."
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page scrolls sideways by {overflow}px on a phone"
        _screenshot(page, "billing-free-phone")

        upgrade = page.locator("button.upgrade[data-plan=pro]")
        upgrade.focus()
        page.keyboard.press("Enter")
        page.locator("#billing-error").filter(has_text="not configured").wait_for()
        assert upgrade.is_enabled()
        assert page.url.startswith(base)
        _screenshot(page, "billing-checkout-503-phone")
        assert problems == []
        page.close()

    def test_stripe_return_url_opens_the_billing_page_with_a_notice(
        self, stack: Stack, browser: Browser
    ) -> None:
        base = stack.url("gateway")
        page = browser.new_page()
        problems = _watch(page)
        _sign_in(page, base, f"back-{uuid.uuid4().hex[:6]}@example.com")
        page.goto(base + "/billing?checkout=canceled")
        page.wait_for_selector("#view[data-ready=billing]")
        assert "nothing was charged" in page.inner_text("#billing-notice")
        assert page.url == base + "/#/billing"
        assert problems == []
        page.close()
