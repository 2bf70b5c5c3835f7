"""An oversized Stripe webhook body is refused (413) before it is read, never a 500.

The webhook is public (Stripe calls it unauthenticated), so its body is the one an anonymous
caller controls. Billing caps it at 1 MiB: a declared Content-Length over the cap is refused
before a byte of the body arrives, and a chunked body is refused as soon as it passes the cap,
while the caller still holds the rest.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
import uuid
from collections.abc import Iterable, Iterator

import httpx
import pytest

from devstack.services import SERVICES, Stack
from servicekit.testing import InfraUrls, pinned_environment, private_vhost
from tests.support.stackkit import free_port, is_envelope

pytestmark = pytest.mark.e2e

WEBHOOK_SECRET = "whsec_security_7c2e9b4d1a6f3e8c"
PATH = "/v1/billing/webhooks/stripe"
CAP = 1024 * 1024
TWO_MIB = 2 * CAP
CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def stack(infra: InfraUrls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The four services as processes, billing accepting webhooks signed with our secret."""
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
    ):
        running = Stack(
            ports={name: free_port() for name in SERVICES},
            db_prefix=f"rs_sec_{uuid.uuid4().hex[:8]}",
            drop_databases_on_exit=True,
            state_dir=tmp_path_factory.mktemp("webhook-stack"),
            extra_env={"BILLING_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET},
            timeout=120,
        )
        with running:
            yield running


def _signature(payload: bytes, secret: str = WEBHOOK_SECRET) -> str:
    at = int(time.time())
    mac = hmac.new(secret.encode(), f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def _event(size: int) -> bytes:
    """A well-formed Stripe event of exactly `size` bytes (padded in its object)."""
    event_id, created = f"evt_{uuid.uuid4().hex}", int(time.time())

    def encode(padding: str) -> bytes:
        obj = {"id": "obj_1", "padding": padding}
        event = {"id": event_id, "type": "security.body_probe", "created": created}
        return json.dumps(event | {"data": {"object": obj}}).encode()

    body = encode("a" * (size - len(encode(""))))
    assert len(body) == size
    return body


def _exchange(port: int, head: bytes, parts: Iterable[bytes]) -> tuple[int, dict[str, object]]:
    """Send a request by hand, then read the answer while the connection is still open."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(head)
        for part in parts:
            sock.sendall(part)
        raw = b""
        while b"\r\n\r\n" not in raw:
            got = sock.recv(65536)
            assert got, f"the connection closed before an answer: {raw!r}"
            raw += got
        header_block, body = raw.split(b"\r\n\r\n", 1)
        lines = header_block.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:])}
        length = int(headers["content-length"])
        while len(body) < length:
            got = sock.recv(65536)
            assert got, "the connection closed in the middle of the answer"
            body += got
    return status, json.loads(body[:length])


def _head(port: int, extra: str) -> bytes:
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nStripe-Signature: {_signature(b'{}')}\r\n{extra}\r\n"
    ).encode()


def _assert_too_large(status: int, body: object) -> None:
    assert status == 413, body
    assert is_envelope(body)
    assert isinstance(body, dict)
    assert body["error"] == "payload_too_large"
    assert body["details"] == {"max_bytes": CAP}


class TestOversizedWebhookBody:
    """2 MiB at the public webhook, declared or chunked, straight to billing or via the gateway."""

    def test_declared_size_is_refused_before_any_body_is_sent(self, stack: Stack) -> None:
        port = stack.ports["billing"]
        # Not one byte of the 2 MiB is sent: the answer can only come from the header.
        status, body = _exchange(port, _head(port, f"Content-Length: {TWO_MIB}\r\n"), [])
        _assert_too_large(status, body)

    def test_chunked_body_is_refused_once_past_the_cap(self, stack: Stack) -> None:
        port = stack.ports["billing"]
        sent = CAP + CHUNK
        chunk = f"{CHUNK:x}\r\n".encode() + b"a" * CHUNK + b"\r\n"
        # The body never ends (no last chunk): billing answers having read just past the cap,
        # while the other ~1 MiB of the 2 MiB is still with the caller.
        status, body = _exchange(
            port, _head(port, "Transfer-Encoding: chunked\r\n"), [chunk] * (sent // CHUNK)
        )
        _assert_too_large(status, body)

    @pytest.mark.parametrize("via", ["billing", "gateway"])
    @pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
    def test_two_mib_is_413_never_500(self, stack: Stack, via: str, declared: bool) -> None:
        payload = _event(TWO_MIB)
        content: bytes | Iterator[bytes] = (
            payload
            if declared
            else iter([payload[i : i + CHUNK] for i in range(0, len(payload), CHUNK)])
        )
        with httpx.Client(base_url=stack.url(via), timeout=30) as client:
            resp = client.post(
                PATH,
                content=content,
                headers={
                    "Stripe-Signature": _signature(payload),
                    "Content-Type": "application/json",
                },
            )
        assert ("content-length" in resp.request.headers) is declared
        _assert_too_large(resp.status_code, resp.json())

    def test_a_signed_body_one_byte_over_the_cap_is_refused(self, stack: Stack) -> None:
        payload = _event(CAP + 1)
        resp = httpx.post(
            stack.url("billing") + PATH,
            content=payload,
            headers={"Stripe-Signature": _signature(payload), "Content-Type": "application/json"},
            timeout=30,
        )
        _assert_too_large(resp.status_code, resp.json())

    def test_a_signed_event_at_the_cap_is_still_applied(self, stack: Stack) -> None:
        payload = _event(CAP)
        resp = httpx.post(
            stack.url("gateway") + PATH,
            content=payload,
            headers={"Stripe-Signature": _signature(payload), "Content-Type": "application/json"},
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"status": "ignored"}

    def test_billing_keeps_serving_after_the_attempts(self, stack: Stack) -> None:
        assert stack.process("billing").running
        assert httpx.get(stack.url("billing") + "/healthz", timeout=10).status_code == 200
