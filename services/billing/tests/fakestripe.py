"""A local HTTP server speaking the part of Stripe's REST API that billing calls.

The official `stripe` library is pointed at it (`base_addresses={"api": url}`), so tests
exercise the real client: form-encoded bodies, `Idempotency-Key`, retries and error parsing.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

API_KEY = "sk_test_fake_0123456789"

_KEY_PART = re.compile(r"\[([^\]]*)\]")


def decode_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's bracket notation (`a[b][0][c]=v`) back into nested dicts and lists."""
    root: dict[str, Any] = {}
    for raw_key, value in pairs:
        head = raw_key.split("[", 1)[0]
        parts = [head, *_KEY_PART.findall(raw_key[len(head) :])]
        node: Any = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt: Any = value if last else ({} if not parts[i + 1].isdigit() else [])
            if isinstance(node, list):
                index = int(part)
                while len(node) <= index:
                    node.append(None)
                if node[index] is None or last:
                    node[index] = nxt
                node = node[index]
            else:
                if part not in node or last:
                    node[part] = nxt
                node = node[part]
    return root


@dataclass
class Recorded:
    """One request the fake received."""

    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None
    authorization: str | None


@dataclass
class FakeStripe:
    """State and controls of the fake: objects, recorded requests, injected failures."""

    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkout_sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    portal_sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    _idempotent: dict[tuple[str, str], tuple[dict[str, Any], int, dict[str, Any]]] = field(
        default_factory=dict
    )
    _failures: list[tuple[int, str, str | None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(
        self, status: int, times: int = 1, error_type: str = "api_error", path: str | None = None
    ) -> None:
        """Answer the next `times` requests (to `path`, or any) with this HTTP error."""
        with self._lock:
            self._failures.extend([(status, error_type, path)] * times)

    def add_subscription(self, obj: dict[str, Any]) -> None:
        """Make a subscription visible to `GET /v1/subscriptions`."""
        with self._lock:
            self.subscriptions[obj["id"]] = obj

    def posts(self, path: str) -> list[Recorded]:
        """The POSTs received on one path, in order."""
        return [r for r in self.requests if r.method == "POST" and r.path == path]

    def handle(
        self, method: str, path: str, params: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        """Answer one request the way Stripe would."""
        key = headers.get("idempotency-key")
        with self._lock:
            self.requests.append(Recorded(method, path, params, key, headers.get("authorization")))
            if headers.get("authorization") != f"Bearer {API_KEY}":
                return 401, _error("invalid_request_error", "Invalid API Key provided.")
            for i, (status, error_type, only) in enumerate(self._failures):
                if only is None or only == path:
                    del self._failures[i]
                    return status, _error(error_type, f"Injected failure ({status}).")
            if method == "POST" and key:
                stored = self._idempotent.get((path, key))
                if stored is not None:
                    stored_params, status, body = stored
                    if stored_params != params:
                        return 400, _error(
                            "idempotency_error",
                            "Keys for idempotent requests can only be used with the same "
                            "parameters they were first used with.",
                        )
                    return status, body
            status, body = self._route(method, path, params)
            if method == "POST" and key:
                self._idempotent[(path, key)] = (params, status, body)
            return status, body

    def _route(self, method: str, path: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        now = int(time.time())
        if method == "POST" and path == "/v1/customers":
            customer = {
                "id": f"cus_{secrets.token_hex(7)}",
                "object": "customer",
                "created": now,
                "email": params.get("email"),
                "metadata": params.get("metadata", {}),
                "livemode": False,
            }
            self.customers[customer["id"]] = customer
            return 200, customer
        if method == "POST" and path == "/v1/checkout/sessions":
            if params.get("customer") not in self.customers:
                return 400, _error("invalid_request_error", "No such customer.")
            sid = f"cs_test_{secrets.token_hex(12)}"
            session = {
                "id": sid,
                "object": "checkout.session",
                "created": now,
                "mode": params.get("mode"),
                "customer": params.get("customer"),
                "client_reference_id": params.get("client_reference_id"),
                "metadata": params.get("metadata", {}),
                "success_url": params.get("success_url"),
                "cancel_url": params.get("cancel_url"),
                "status": "open",
                "url": f"https://checkout.stripe.test/c/pay/{sid}",
                "livemode": False,
            }
            self.checkout_sessions[sid] = session
            return 200, session
        if method == "POST" and path == "/v1/billing_portal/sessions":
            if params.get("customer") not in self.customers:
                return 400, _error("invalid_request_error", "No such customer.")
            pid = f"bps_{secrets.token_hex(12)}"
            portal = {
                "id": pid,
                "object": "billing_portal.session",
                "created": now,
                "customer": params["customer"],
                "return_url": params.get("return_url"),
                "url": f"https://billing.stripe.test/p/session/{pid}",
                "livemode": False,
            }
            self.portal_sessions[pid] = portal
            return 200, portal
        if method == "GET" and path == "/v1/subscriptions":
            owner = params.get("customer")
            found = [s for s in self.subscriptions.values() if s.get("customer") == owner]
            return 200, {
                "object": "list",
                "url": "/v1/subscriptions",
                "has_more": False,
                "data": found,
            }
        return 404, _error("invalid_request_error", f"Unrecognized request URL ({path}).")


def _error(error_type: str, message: str) -> dict[str, Any]:
    return {"error": {"type": error_type, "message": message}}


def _handler(fake: FakeStripe) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, method: str) -> None:
            parts = urlsplit(self.path)
            pairs = parse_qsl(parts.query, keep_blank_values=True)
            length = int(self.headers.get("content-length") or 0)
            if length:
                pairs += parse_qsl(self.rfile.read(length).decode(), keep_blank_values=True)
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, body = fake.handle(method, parts.path, decode_form(pairs), headers)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Request-Id", f"req_{secrets.token_hex(6)}")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@contextmanager
def serve() -> Iterator[FakeStripe]:
    """Run a fake Stripe on 127.0.0.1 (a free port) for the duration of the block."""
    fake = FakeStripe()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake-stripe", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
