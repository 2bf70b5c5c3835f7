"""The whole stack, each service its own process, on free ports and throwaway databases."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest

from devstack.services import SERVICES, Stack
from servicekit.testing import InfraUrls, pinned_environment, private_vhost

E2E_WEBHOOK_SECRET = "whsec_test_0123456789abcdef"
E2E_BILLING_ENV = {
    "BILLING_STRIPE_WEBHOOK_SECRET": E2E_WEBHOOK_SECRET,
    "BILLING_PRICE_PRO": "price_e2e_pro",
    "BILLING_PRICE_BUSINESS": "price_e2e_business",
}
"""Stripe webhooks are accepted (signed with this secret); no API key, so checkout is 503."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def stack(infra: InfraUrls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """All four services running as separate processes against real infrastructure."""
    # The stack uses the test run's infrastructure rather than starting its own, with a
    # RabbitMQ vhost of its own so its workers never take the other tests' messages.
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
            ports={name: _free_port() for name in SERVICES},
            db_prefix=f"rs_e2e_{uuid.uuid4().hex[:8]}",
            drop_databases_on_exit=True,
            state_dir=tmp_path_factory.mktemp("stack"),
            extra_env=E2E_BILLING_ENV,
            timeout=120,
        )
        with running:
            yield running
