"""Forwarding `/v1/...` to the internal services with a signed internal identity.

Bodies stream both ways, so a 30 MiB upload never sits in the gateway's memory. Only an
allow-list of headers crosses in either direction: the caller's `Authorization` and any
`X-Internal-Identity` it sends are never forwarded.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx
from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from contracts.identity import HEADER, REQUEST_ID_HEADER, Identity
from gateway.errors import BadGateway, PayloadTooLarge, UpstreamTimeout, UpstreamUnavailable
from gateway.settings import GatewaySettings
from servicekit.errors import NotFound, ServiceError
from servicekit.identity import sign_identity
from servicekit.logs import request_id_var

logger = logging.getLogger(__name__)

REQUEST_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "accept",
        "if-none-match",
        "last-event-id",
        "idempotency-key",
        "stripe-signature",
    }
)
RESPONSE_HEADERS = frozenset(
    {"content-type", "content-disposition", "location", "etag", "cache-control", "retry-after"}
)


@dataclass(frozen=True)
class Upstream:
    """An internal service: its name (the identity audience), a label for people, its URL."""

    name: str
    label: str
    base_url: str


PROJECTS = "projects"
BILLING = "billing"
STAGING = "staging"

LABELS = {
    PROJECTS: "Projects and photos",
    BILLING: "Billing",
    STAGING: "Staging administration",
}

ROUTES: tuple[tuple[str, str], ...] = (
    ("/v1/projects", PROJECTS),
    ("/v1/uploads", PROJECTS),
    ("/v1/images", PROJECTS),
    ("/v1/usage", PROJECTS),
    # Before `/v1/billing`, whose catch-all would otherwise take it without the admin gate.
    ("/v1/billing/admin", BILLING),
    ("/v1/billing", BILLING),
    ("/v1/plans", BILLING),
    ("/v1/admin/staging", STAGING),
)
"""Path prefix → the service that owns it, most specific first."""

ADMIN_PREFIXES: tuple[str, ...] = ("/v1/admin/", "/v1/billing/admin")
"""Forwarded prefixes only admins may use."""

PUBLIC_ROUTES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("/v1/plans", ("GET", "HEAD"), BILLING),
    ("/v1/plans/{rest:path}", ("GET", "HEAD"), BILLING),
    # Stripe signs its webhooks; billing checks the signature on the raw body.
    ("/v1/billing/webhooks/stripe", ("POST",), BILLING),
)
"""Forwarded routes that need no token."""


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def is_admin_prefix(prefix: str) -> bool:
    """Whether a forwarded prefix is for admins only."""
    return any(_under(prefix, admin.rstrip("/")) for admin in ADMIN_PREFIXES)


def is_forwarded(path: str) -> bool:
    """Whether the gateway forwards `path` to an internal service."""
    return any(_under(path, prefix) for prefix, _ in ROUTES)


def is_public(method: str, path: str) -> bool:
    """Whether `method path` is forwarded without a token."""
    for route, methods, _ in PUBLIC_ROUTES:
        prefix = route.removesuffix("/{rest:path}")
        matches = _under(path, prefix) if route.endswith("{rest:path}") else path == route
        if matches and method in methods:
            return True
    return False


class Forwarder:
    """One pooled HTTP client to the internal services, opened and closed by the lifespan."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.upstreams = {
            PROJECTS: Upstream(PROJECTS, LABELS[PROJECTS], settings.projects_url),
            BILLING: Upstream(BILLING, LABELS[BILLING], settings.billing_url),
            STAGING: Upstream(STAGING, LABELS[STAGING], settings.staging_url),
        }
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        """Open the connection pool."""
        s = self.settings
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                s.upstream_timeout_seconds, connect=s.upstream_connect_timeout_seconds
            ),
            limits=httpx.Limits(
                max_connections=s.upstream_max_connections,
                max_keepalive_connections=min(50, s.upstream_max_connections),
            ),
            follow_redirects=False,
            trust_env=False,
            # One client serves every user: a cookie set for one must never ride along with
            # another's request, so the jar accepts nothing.
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        )

    async def close(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def client(self) -> httpx.AsyncClient:
        """The pooled client (only while the service runs)."""
        if self._client is None:
            raise RuntimeError("the forwarder is not started")
        return self._client

    def identity_header(self, identity: Identity, audience: str) -> str:
        """The signed identity that `audience` accepts for this caller."""
        return sign_identity(
            identity, secret=self.settings.internal_secret.get_secret_value(), audience=audience
        )

    async def forward(
        self, request: Request, target: str, identity: Identity | None
    ) -> StreamingResponse:
        """Relay `request` to `target` and stream its answer back."""
        upstream = self.upstreams[target]
        path = _safe_path(request)
        url = upstream.base_url + path
        if query := request.scope.get("query_string", b"").decode("latin-1"):
            url = f"{url}?{query}"
        headers = {k: v for k, v in request.headers.items() if k in REQUEST_HEADERS}
        headers[REQUEST_ID_HEADER] = request_id_var.get() or ""
        if identity is not None:
            headers[HEADER] = self.identity_header(identity, upstream.name)
        content = self._body(request, headers)
        outgoing = self.client.build_request(request.method, url, headers=headers, content=content)
        try:
            response = await self.client.send(outgoing, stream=True)
        except PayloadTooLarge:
            raise
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            logger.warning("%s unreachable: %s", upstream.name, type(exc).__name__)
            raise UpstreamUnavailable(upstream.label) from exc
        except httpx.TimeoutException as exc:
            logger.warning("%s timed out: %s", upstream.name, type(exc).__name__)
            raise UpstreamTimeout(upstream.label) from exc
        except httpx.TransportError as exc:
            logger.warning("%s failed: %s", upstream.name, type(exc).__name__)
            raise BadGateway(upstream.label) from exc
        out_headers = [(k, v) for k, v in response.headers.multi_items() if k in RESPONSE_HEADERS]
        return _streaming(response, upstream.name, out_headers)

    def _body(self, request: Request, headers: dict[str, str]) -> AsyncIterator[bytes] | None:
        limit = self.settings.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ServiceError("Content-Length is not valid.")
            if int(declared) > limit:
                raise PayloadTooLarge(limit)
            if int(declared) == 0:
                return None
        elif "transfer-encoding" not in request.headers:
            return None

        async def stream() -> AsyncIterator[bytes]:
            received = 0
            async for chunk in request.stream():
                received += len(chunk)
                # A chunked body has no declared size: count it as it arrives.
                if received > limit:
                    raise PayloadTooLarge(limit)
                if chunk:
                    yield chunk

        return stream()

    async def get_json(
        self, target: str, path: str, identity: Identity, *, within_seconds: float = 5.0
    ) -> Any:
        """GET a JSON document from an internal service; None when it cannot answer."""
        upstream = self.upstreams[target]
        headers = {
            "accept": "application/json",
            REQUEST_ID_HEADER: request_id_var.get() or "",
            HEADER: self.identity_header(identity, upstream.name),
        }
        try:
            response = await self.client.get(
                upstream.base_url + path, headers=headers, timeout=within_seconds
            )
        except httpx.HTTPError as exc:
            logger.warning("%s %s unavailable: %s", upstream.name, path, type(exc).__name__)
            return None
        if response.status_code != 200:
            logger.warning("%s %s answered %d", upstream.name, path, response.status_code)
            return None
        try:
            return response.json()
        except ValueError:
            return None


def _safe_path(request: Request) -> str:
    """The path to forward, exactly as received; dot segments are refused."""
    decoded = request.url.path
    if any(seg in (".", "..") for seg in decoded.split("/")):
        raise NotFound("Not found.")
    raw: bytes | None = request.scope.get("raw_path")
    if raw:
        path = raw.decode("latin-1").split("?", 1)[0]
        if "%2e" in path.lower() or "%2f" in path.lower():
            # Encoded dots or slashes could change which resource the upstream resolves.
            raise NotFound("Not found.")
        return path
    return decoded


def _streaming(
    response: httpx.Response, name: str, headers: list[tuple[str, str]]
) -> StreamingResponse:
    out = StreamingResponse(
        _relay(response, name),
        status_code=response.status_code,
        background=BackgroundTask(response.aclose),
    )
    # StreamingResponse takes a mapping; raw pairs keep repeated headers intact.
    out.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    return out


async def _relay(response: httpx.Response, name: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_bytes():
            yield chunk
    except httpx.HTTPError as exc:
        # Headers are gone already; aborting the connection tells the client it is truncated.
        logger.warning("%s broke off its answer: %s", name, type(exc).__name__)
        raise
