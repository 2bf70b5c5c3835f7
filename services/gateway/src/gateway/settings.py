"""Gateway settings: upstream services, token verification and the development issuer."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from servicekit.settings import ServiceSettings

CommaList = Annotated[list[str], NoDecode]


class GatewaySettings(ServiceSettings):
    """Settings of the public entry point (`GATEWAY_*`)."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="forbid", case_sensitive=False)

    service_name: ClassVar[str] = "gateway"

    port: int = 8000
    projects_url: str = "http://127.0.0.1:8001"
    staging_url: str = "http://127.0.0.1:8002"
    billing_url: str = "http://127.0.0.1:8003"
    public_url: str = "http://127.0.0.1:8000"

    auth0_domain: str | None = None
    auth0_audience: str | None = None
    auth0_jwks_url: str | None = None
    auth0_spa_client_id: str | None = None
    jwks_cache_seconds: float = 600
    jwks_timeout_seconds: float = 5
    jwks_refresh_cooldown_seconds: float = 10
    jwt_leeway_seconds: int = 30

    dev_key_path: Path = Path(".stack/dev-issuer-key.pem")
    dev_audience: str = "https://api.realstaging.local"
    dev_token_ttl_seconds: int = 3600

    upstream_timeout_seconds: float = 30
    upstream_connect_timeout_seconds: float = 5
    upstream_max_connections: int = 200
    cors_origins: CommaList = Field(default_factory=list)
    max_body_bytes: int = 30 * 1024 * 1024
    admin_subs: CommaList = Field(default_factory=list)

    # Live updates (`GET /v1/events`).
    stream_ticket_secret: SecretStr | None = None
    stream_ticket_ttl_seconds: int = Field(default=60, ge=5, le=600)
    sse_heartbeat_seconds: float = Field(default=15, gt=0)
    sse_retry_ms: int = Field(default=3000, ge=100)
    sse_queue_size: int = Field(default=256, ge=1)
    sse_max_streams_per_user: int = Field(default=10, ge=1)
    sse_send_timeout_seconds: float = Field(default=30, gt=0)
    sse_batch_size: int = Field(default=200, ge=1, le=5000)
    image_events_retention_hours: float = Field(default=24, gt=0)
    maintenance_interval_seconds: float = Field(default=300, gt=0)
    # A new stream's snapshot and the live reconciler ask projects for the truth.
    live_snapshot_timeout_seconds: float = Field(default=3, gt=0)
    live_snapshot_recent_seconds: float = Field(default=600, ge=0)
    live_snapshot_limit: int = Field(default=500, ge=1, le=1000)
    live_reconcile_stale_seconds: float = Field(default=120, gt=0)
    live_reconcile_batch: int = Field(default=200, ge=1, le=1000)
    live_projects_backoff_seconds: float = Field(default=10, ge=0)
    live_wake_interval_seconds: float = Field(default=5, gt=0)

    # Per-user limit on writes under `/v1`, shared by every replica through PostgreSQL.
    rate_limit_enabled: bool = True
    rate_limit_writes: int = Field(default=60, ge=1)
    rate_limit_window_seconds: int = Field(default=60, ge=1, le=3600)
    rate_limit_exempt_paths: CommaList = Field(
        default_factory=lambda: ["/v1/billing/webhooks/stripe", "/v1/events/ticket"]
    )

    # The gateway's Prometheus metrics are served on a port of their own, never the public one;
    # unset, they are not served at all. The host is loopback unless a scraper must reach it
    # (in Kubernetes `0.0.0.0`, a port the Service does not expose).
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"

    # The merged public OpenAPI document.
    openapi_refresh_seconds: float = Field(default=300, gt=0)
    openapi_fetch_timeout_seconds: float = Field(default=5, gt=0)

    @field_validator("cors_origins", "admin_subs", "rate_limit_exempt_paths", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        # Accept a JSON list or the friendlier `a,b,c` in environment variables.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @field_validator("auth0_domain", mode="before")
    @classmethod
    def _bare_domain(cls, value: Any) -> Any:
        # People paste `https://tenant.auth0.com/`; the issuer is built from the bare host.
        if isinstance(value, str):
            value = value.strip().removeprefix("https://").removeprefix("http://").rstrip("/")
            return value or None
        return value

    @field_validator("public_url", "projects_url", "staging_url", "billing_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    def production_problems(self) -> dict[str, str]:
        """Also Auth0: the development issuer cannot run in production."""
        problems = super().production_problems()
        if not self.auth0_domain:
            problems["auth0_domain"] = (
                "is required in production; the development issuer cannot be used there"
            )
        return problems

    @model_validator(mode="after")
    def _auth_is_configured(self) -> GatewaySettings:
        if self.auth0_domain and not self.auth0_audience:
            raise ValueError("GATEWAY_AUTH0_AUDIENCE is required when GATEWAY_AUTH0_DOMAIN is set")
        if self.metrics_port is not None and self.metrics_port == self.port:
            raise ValueError("GATEWAY_METRICS_PORT must differ from GATEWAY_PORT (the public one)")
        ticket = self.stream_ticket_secret
        if ticket is not None and len(ticket.get_secret_value()) < 32:
            raise ValueError("GATEWAY_STREAM_TICKET_SECRET must be at least 32 characters long")
        return self

    @property
    def ticket_key(self) -> bytes:
        """The HS256 key of stream tickets, the same on every replica."""
        if self.stream_ticket_secret is not None:
            return self.stream_ticket_secret.get_secret_value().encode()
        # Derived with domain separation, so an unset setting never breaks a deployment and a
        # ticket can never pass for an internal identity token.
        return hmac.new(
            self.internal_secret.get_secret_value().encode(),
            b"realstaging gateway stream tickets",
            hashlib.sha256,
        ).digest()

    @property
    def dev_mode(self) -> bool:
        """Whether the gateway is its own token issuer (never in production)."""
        return self.auth0_domain is None and not self.is_production

    @property
    def token_issuer(self) -> str:
        """The `iss` every accepted access token must carry."""
        if self.auth0_domain:
            return f"https://{self.auth0_domain}/"
        return f"{self.public_url}/"

    @property
    def token_audience(self) -> str:
        """The `aud` every accepted access token must carry."""
        return (
            self.auth0_audience if self.auth0_domain and self.auth0_audience else self.dev_audience
        )

    @property
    def jwks_url(self) -> str:
        """Where the Auth0 tenant publishes its signing keys."""
        return self.auth0_jwks_url or f"https://{self.auth0_domain}/.well-known/jwks.json"
