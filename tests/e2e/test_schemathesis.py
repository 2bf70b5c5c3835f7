"""Property-based fuzzing of the public API from its own OpenAPI document: never a 5xx."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from devstack.services import Stack

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = 20
"""Per operation and generation mode (valid, then invalid requests)."""
WRITES_PER_USER = 40
"""Below the gateway's write rate limit (60 a minute per user), so fuzzing is not just 429s."""


class Tokens:
    """Development tokens, a new user every few writes."""

    def __init__(self, gateway: str) -> None:
        self.gateway = gateway
        self._calls = itertools.count()
        self._header: dict[str, str] = {}

    def headers(self) -> dict[str, str]:
        """The Authorization header for the next call."""
        if next(self._calls) % WRITES_PER_USER == 0 or not self._header:
            sub = f"dev|fuzz-{uuid.uuid4().hex[:10]}"
            resp = httpx.post(f"{self.gateway}/v1/dev/token", json={"sub": sub}, timeout=10)
            resp.raise_for_status()
            self._header = {"Authorization": f"Bearer {resp.json()['access_token']}"}
        return self._header


@pytest.fixture(scope="module")
def tokens(stack: Stack) -> Tokens:
    """Tokens for the e2e stack's gateway."""
    return Tokens(stack.url("gateway"))


DOCUMENTED_503 = frozenset({"payments_not_configured"})
"""Checkout and portal answer 503 on a server without Stripe keys, by design."""


def _documented_unavailable(response: Any) -> bool:
    if response.status_code != 503:
        return False
    try:
        return response.json().get("error") in DOCUMENTED_503
    except ValueError:
        return False


def _fuzz(operation: Any, mode: GenerationMode, base_url: str, tokens: Tokens) -> str | None:
    """Run one operation's examples in one generation mode; the first failure, or None."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
    )
    def run(case: Any) -> None:
        headers = tokens.headers()
        response = case.call(base_url=base_url, headers=headers, timeout=30)
        if _documented_unavailable(response):
            return
        case.validate_response(
            response,
            checks=[not_a_server_error],
            headers=headers,
            transport_kwargs={"base_url": base_url, "headers": headers},
        )

    try:
        run()
    except Unsatisfiable:
        # Nothing in this operation can be made invalid (no parameters, no body).
        return None
    except (Exception, BaseExceptionGroup) as exc:
        return f"{operation.method.upper()} {operation.path} ({mode.value}): {str(exc)[:1500]}"
    return None


def _stable_document(base: str, within: float = 20) -> dict[str, Any]:
    """The OpenAPI document once the gateway has merged the services' paths into it."""
    deadline = time.monotonic() + within
    while True:
        document: dict[str, Any] = httpx.get(f"{base}/openapi.json", timeout=30).json()
        merged = any(
            not p.startswith(("/v1/me", "/v1/dev", "/v1/admin/users", "/v1/catalog", "/v1/events"))
            for p in document.get("paths", {})
        )
        if merged or time.monotonic() > deadline:
            return document
        time.sleep(0.5)


class TestGatewayOpenApi:
    """Every operation the gateway documents, fed valid and invalid generated requests."""

    def test_no_operation_answers_a_server_error(self, stack: Stack, tokens: Tokens) -> None:
        base = stack.url("gateway")
        document = _stable_document(base)
        schema = schemathesis.openapi.from_dict(document)
        failures: list[str] = []
        fuzzed: list[str] = []
        streams: list[str] = []
        for result in schema.get_all_operations():
            operation = result.ok()
            label = f"{operation.method.upper()} {operation.path}"
            raw = document["paths"][operation.path][operation.method.lower()]
            if "text/event-stream" in json.dumps(raw.get("responses", {})):
                # An event stream never ends by itself; the SSE tests cover it.
                streams.append(label)
                continue
            started = time.monotonic()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                failure = _fuzz(operation, mode, base, tokens)
                if failure:
                    failures.append(failure)
            fuzzed.append(f"{label} {time.monotonic() - started:.1f}s")
        print(f"fuzzed {len(fuzzed)} operations: {fuzzed}; not fuzzed (streams): {streams}")
        assert fuzzed, "the gateway's OpenAPI document lists no operation"
        assert not failures, f"{len(failures)} failing operation(s):\n" + "\n\n".join(failures)
