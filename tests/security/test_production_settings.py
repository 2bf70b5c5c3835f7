"""Production start-up with a default or a placeholder is refused, naming each setting.

Each attempt is what an operator could ship by mistake: the development stack's logins, the
server defaults (`guest:guest`, `postgres:postgres`, `minioadmin`), the templates' `REPLACE` and
example.com values, a Stripe replay window turned off. Compose publishes only the gateway.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from billing.settings import BillingSettings
from devstack.services import ServiceError, ServiceProcess
from gateway.settings import GatewaySettings
from projects.settings import ProjectsSettings
from servicekit.settings import SHARED_FIELDS, ServiceSettings
from staging.settings import StagingSettings
from tests.support.stackkit import free_port

ROOT = Path(__file__).resolve().parents[2]

SETTINGS: dict[str, type[ServiceSettings]] = {
    "gateway": GatewaySettings,
    "projects": ProjectsSettings,
    "staging": StagingSettings,
    "billing": BillingSettings,
}
WITH_S3 = ("projects", "staging")

INTERNAL_SECRET = "4d1c7e9a0b3f5a8c2e6d9b1f4a7c0e3d5b8a1c4f"
S3_SECRET = "q7Lm2Nz8Rt4Wv6Yb0Cd3Fg5Hj9Kp1Ss"


def _real(service: str) -> dict[str, Any]:
    """A production configuration of `service` with nothing to refuse."""
    values: dict[str, Any] = {
        "environment": "production",
        "internal_secret": INTERNAL_SECRET,
        "database_url": f"postgresql+asyncpg://{service}:pg-8Jq3w@db.internal:5432/{service}",
        "amqp_url": f"amqps://{service}:mq-2Rb7t@mq.internal:5671/realstaging",
    }
    if service in WITH_S3:
        values |= {
            "s3_endpoint": "https://s3.eu-west-1.amazonaws.com",
            "s3_access_key": "AKIA7RQ2MZ4TNV8WLPC3",
            "s3_secret_key": S3_SECRET,
        }
    if service == "gateway":
        values |= {
            "auth0_domain": "realstaging.eu.auth0.com",
            "auth0_audience": "https://api.realstaging.app",
            "public_url": "https://api.realstaging.app",
        }
    if service == "billing":
        values |= {
            "stripe_secret_key": "sk_live_51Nq8Tz2Lw4Jm6Pb",
            "stripe_webhook_secret": "whsec_9Gd2Kf7Lq1Mz5Rt8",
        }
    return values


def _variable(service: str, field: str) -> str:
    """The environment variable an operator would fix: the stack-wide name when there is one."""
    return field.upper() if field in SHARED_FIELDS else f"{service.upper()}_{field.upper()}"


def _refusal(service: str, values: dict[str, Any]) -> str:
    """The one error production start-up gives; fails if the settings are accepted."""
    with pytest.raises(ValidationError) as caught:
        SETTINGS[service](**values)
    errors = caught.value.errors(include_input=False)
    assert len(errors) == 1, errors
    return str(errors[0]["msg"])


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No setting of this test process leaks into the settings under test."""
    prefixes = tuple(f"{svc.upper()}_" for svc in SETTINGS)
    for name in list(os.environ):
        if name.startswith(prefixes) or name.lower() in SHARED_FIELDS:
            monkeypatch.delenv(name)
    return monkeypatch


ATTEMPTS: list[tuple[str, str, dict[str, Any], tuple[str, ...]]] = [
    # (service, attempt, overrides, fields that must be named)
    *[
        (svc, "development PostgreSQL login", {"database_url": url}, ("database_url",))
        for svc in SETTINGS
        for url in (
            f"postgresql+asyncpg://realstaging:realstaging@db.internal:5432/{svc}",
            f"postgresql+asyncpg://postgres:postgres@db.internal:5432/{svc}",
        )
    ],
    *[
        (svc, "default AMQP login", {"amqp_url": url}, ("amqp_url",))
        for svc in SETTINGS
        for url in (
            "amqp://guest:guest@mq.internal:5672/",
            "amqps://realstaging:realstaging@mq.internal:5671/",
            "amqp://mq.internal:5672/",
        )
    ],
    *[
        (svc, "template internal secret", {"internal_secret": value}, ("internal_secret",))
        for svc in SETTINGS
        for value in (
            "REPLACE-with-at-least-32-random-characters",
            "changeme-changeme-changeme-changeme",
            "changethis-0123456789-0123456789-0123",
        )
    ],
    *[
        (
            svc,
            "template AMQP URL",
            {"amqp_url": "amqps://USER:PASSWORD@rabbitmq.example.com:5671/realstaging"},
            ("amqp_url",),
        )
        for svc in SETTINGS
    ],
    *[
        (svc, "S3 credentials", {"s3_access_key": key, "s3_secret_key": secret}, fields)
        for svc in WITH_S3
        for key, secret, fields in (
            ("realstaging", "realstaging-secret", ("s3_access_key", "s3_secret_key")),
            ("minioadmin", "minioadmin", ("s3_access_key", "s3_secret_key")),
            ("REPLACE", "REPLACE", ("s3_access_key", "s3_secret_key")),
            ("AKIA7RQ2MZ4TNV8WLPC3", "xxxxxxxxxxxxxxxx", ("s3_secret_key",)),
        )
    ],
    *[(svc, "unset S3 endpoint", {"s3_endpoint": ""}, ("s3_endpoint",)) for svc in WITH_S3],
    ("billing", "template webhook secret", {"stripe_webhook_secret": "whsec_REPLACE"}, ()),
    ("billing", "template Stripe key", {"stripe_secret_key": "sk_live_REPLACE"}, ()),
    ("billing", "template Stripe key", {"stripe_secret_key": "sk_live_xxx"}, ()),
    *[
        ("billing", "replay window", {"webhook_tolerance_seconds": seconds}, ())
        for seconds in (0, 59, 601, 86400)
    ],
    ("gateway", "template Auth0 tenant", {"auth0_domain": "example.eu.auth0.com"}, ()),
    ("gateway", "no Auth0 tenant", {"auth0_domain": None}, ()),
    ("gateway", "template CORS origin", {"cors_origins": ["https://app.example.com"]}, ()),
    ("gateway", "template stream ticket secret", {"stream_ticket_secret": "x" * 40}, ()),
    (
        "staging",
        "template Replicate token",
        {"backend": "replicate", "replicate_api_token": "r8_REPLACE"},
        (),
    ),
    ("staging", "template OpenAI key", {"openai_api_key": "sk-changeme"}, ()),
]


def _named(service: str, overrides: dict[str, Any], fields: tuple[str, ...]) -> tuple[str, ...]:
    """The fields an attempt must name: the given ones, else every overridden one."""
    return fields or tuple(k for k in overrides if k != "backend")


class TestEachDefaultOrPlaceholder:
    """One attempt per kind of default or placeholder, against every service's settings."""

    @pytest.mark.parametrize("service", list(SETTINGS))
    def test_a_real_production_configuration_is_accepted(self, service: str) -> None:
        settings = SETTINGS[service](**_real(service))
        assert settings.is_production
        assert settings.production_problems() == {}

    @pytest.mark.parametrize(
        ("service", "attempt", "overrides", "fields"),
        ATTEMPTS,
        ids=[f"{svc}-{attempt}-{i}" for i, (svc, attempt, _, _) in enumerate(ATTEMPTS)],
    )
    def test_production_refuses(
        self, service: str, attempt: str, overrides: dict[str, Any], fields: tuple[str, ...]
    ) -> None:
        message = _refusal(service, _real(service) | overrides)
        for field in _named(service, overrides, fields):
            assert f"- {_variable(service, field)}" in message, (attempt, message)
        # The error names settings, never their values.
        for value in overrides.values():
            if isinstance(value, str) and len(value) > 12:
                assert value not in message, (attempt, message)

    @pytest.mark.parametrize("service", list(SETTINGS))
    def test_connections_have_no_default_in_production(self, service: str) -> None:
        values = _real(service)
        unset = ["database_url", "amqp_url"] + (["s3_endpoint"] if service in WITH_S3 else [])
        for field in unset:
            del values[field]
        message = _refusal(service, values)
        for field in unset:
            assert f"- {_variable(service, field)}" in message, message
            assert "is required in production" in message

    @pytest.mark.parametrize("service", list(SETTINGS))
    def test_development_and_test_keep_their_defaults(self, service: str) -> None:
        for environment in ("development", "test"):
            settings = SETTINGS[service](environment=environment)
            assert settings.database_url.startswith("postgresql+asyncpg://realstaging:")
            assert settings.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"


def _env_of(document: dict[str, Any], key: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in (document.get(key) or {}).items()}


class TestShippedConfigurations:
    """The configurations in the repository cannot run in production as they are."""

    @pytest.mark.parametrize("service", list(SETTINGS))
    def test_compose_settings_are_refused_in_production(
        self, service: str, clean_environment: pytest.MonkeyPatch
    ) -> None:
        compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
        env = _env_of(compose["services"][service], "environment")
        assert env["ENVIRONMENT"] == "development"
        for name, value in env.items():
            clean_environment.setenv(name, value)
        clean_environment.setenv("ENVIRONMENT", "production")
        with pytest.raises(ValidationError) as caught:
            SETTINGS[service]()
        message = str(caught.value.errors(include_input=False)[0]["msg"])
        named = [f"{service.upper()}_DATABASE_URL", "AMQP_URL"]
        if service in WITH_S3:
            named += ["S3_ACCESS_KEY", "S3_SECRET_KEY"]
        for variable in named:
            assert f"- {variable}" in message, message

    @pytest.mark.parametrize("service", list(SETTINGS))
    def test_kubernetes_templates_are_refused_until_replaced(
        self, service: str, clean_environment: pytest.MonkeyPatch
    ) -> None:
        k8s = ROOT / "deploy" / "k8s"
        config = _env_of(yaml.safe_load((k8s / "configmap.yaml").read_text()), "data")
        secret = _env_of(yaml.safe_load((k8s / "secret.example.yaml").read_text()), "stringData")
        assert config["ENVIRONMENT"] == "production"
        for name, value in (config | secret).items():
            clean_environment.setenv(name, value)
        with pytest.raises(ValidationError) as caught:
            SETTINGS[service]()
        message = str(caught.value.errors(include_input=False)[0]["msg"])
        named = ["INTERNAL_SECRET", "AMQP_URL", f"{service.upper()}_DATABASE_URL"]
        if service in WITH_S3:
            named += ["S3_ACCESS_KEY", "S3_SECRET_KEY"]
        if service == "billing":
            named += ["BILLING_STRIPE_SECRET_KEY", "BILLING_STRIPE_WEBHOOK_SECRET"]
        if service == "gateway":
            named += ["GATEWAY_AUTH0_DOMAIN", "GATEWAY_PUBLIC_URL", "GATEWAY_CORS_ORIGINS"]
        for variable in named:
            assert f"- {variable}" in message, message


class TestProcessStart:
    """A service process started with defaults exits at once and says what to fix."""

    def test_billing_with_defaults_exits_naming_each_setting(self, tmp_path: Path) -> None:
        # The process environment, without any service setting (see `clean_environment`).
        env = dict(os.environ) | {
            "ENVIRONMENT": "production",
            "INTERNAL_SECRET": INTERNAL_SECRET,
            "BILLING_DATABASE_URL": (
                "postgresql+asyncpg://realstaging:realstaging@127.0.0.1:5432/realstaging_billing"
            ),
            "BILLING_STRIPE_WEBHOOK_SECRET": "whsec_REPLACE",
            "BILLING_WEBHOOK_TOLERANCE_SECONDS": "0",
            "PYTHONUNBUFFERED": "1",
        }
        port = free_port()
        env["BILLING_PORT"] = str(port)
        process = ServiceProcess("billing", env, port=port, log_path=tmp_path / "billing.log")
        process.start()
        try:
            with pytest.raises(ServiceError, match="exited with code"):
                process.wait_healthy(timeout=60)
        finally:
            process.stop()
        assert process.returncode not in (None, 0)
        log = (tmp_path / "billing.log").read_text()
        assert "billing: the settings are not valid" in log
        for variable in (
            "BILLING_DATABASE_URL",
            "AMQP_URL",
            "BILLING_STRIPE_WEBHOOK_SECRET",
            "BILLING_WEBHOOK_TOLERANCE_SECONDS",
        ):
            assert f"- {variable}" in log, log
        # Neither a traceback nor the values given (the secret above) reach the log.
        assert "Traceback" not in log
        assert INTERNAL_SECRET not in log


class TestComposePorts:
    """Only the gateway is published on every interface; the rest stays on the host."""

    def test_only_the_gateway_listens_beyond_loopback(self) -> None:
        files = [ROOT / "docker-compose.yml", *sorted((ROOT / "deploy").rglob("*compose*.y*ml"))]
        published: dict[str, list[str]] = {}
        for path in files:
            for name, service in (yaml.safe_load(path.read_text())["services"] or {}).items():
                for port in service.get("ports") or []:
                    published.setdefault(name, []).append(str(port))
        assert published["gateway"] == ["8000:8000"]
        exposed = {
            name: ports
            for name, ports in published.items()
            if name != "gateway" and not all(p.startswith("127.0.0.1:") for p in ports)
        }
        assert exposed == {}
        assert {"minio", "rabbitmq"} <= published.keys()
