"""The dead-letter admin API: admins list, inspect, replay and purge parked messages."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
from fastapi import FastAPI

from gateway.app import create_app
from gateway.settings import GatewaySettings
from servicekit.runtime import Runtime
from servicekit.testing import (
    TEST_INTERNAL_SECRET,
    InfraUrls,
    private_vhost,
    running,
    wait_for,
)

pytestmark = pytest.mark.integration

DEAD = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
async def database_url(database_factory: Callable[..., Any]) -> str:
    return str(await database_factory("gateway"))


@pytest.fixture(scope="module")
def amqp_url(infra: InfraUrls) -> Iterator[str]:
    """A virtual host of this module's own: no consumer of another test takes a replayed message."""
    with private_vhost(infra.amqp_url) as url:
        yield url


@asynccontextmanager
async def gateway(
    amqp_url: str, database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = GatewaySettings(
        environment="development",
        database_url=database_url,
        amqp_url=amqp_url,
        internal_secret=TEST_INTERNAL_SECRET,
        dev_key_path=tmp_path / "dev-issuer.pem",
        public_url="http://gw",
        projects_url=DEAD,
        billing_url=DEAD,
        staging_url=DEAD,
        upstream_connect_timeout_seconds=0.5,
        admin_subs=["dev|root"],
    )
    app = create_app(settings)
    async with (
        running(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw") as client,
    ):
        runtime: Runtime = app.state.runtime
        await wait_for(runtime.broker_ready.is_set, within=30)
        yield app, client


async def sign_in(client: httpx.AsyncClient, sub: str | None = None) -> dict[str, str]:
    sub = sub or f"dev|{uuid.uuid4().hex[:12]}"
    token = (await client.post("/v1/dev/token", json={"sub": sub})).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


async def park(amqp_url: str, queue: str, message_id: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.default_exchange.publish(
            aio_pika.Message(
                b'{"event_type": "user.created", "data": {}}',
                message_id=message_id,
                headers={
                    "x-death-reason": "malformed message: data",
                    "x-event-type": "user.created",
                },
            ),
            routing_key=f"{queue}.dlq",
        )


async def message_ids(amqp_url: str, queue: str) -> set[str | None]:
    """The ids of the messages waiting in `queue` (taken and handed back)."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        ids: set[str | None] = set()
        while (message := await declared.get(no_ack=False, fail=False)) is not None:
            ids.add(message.message_id)
        return ids


class TestDeadLetterAdmin:
    async def test_only_admins_may_use_it(
        self, amqp_url: str, database_url: str, tmp_path: Path
    ) -> None:
        async with gateway(amqp_url, database_url, tmp_path) as (_, client):
            user = await sign_in(client)
            anonymous = await client.get("/v1/admin/dead-letters")
            assert anonymous.status_code == 401
            for method, path in (
                ("GET", "/v1/admin/dead-letters"),
                ("GET", "/v1/admin/dead-letters/billing.users"),
                ("POST", "/v1/admin/dead-letters/billing.users/replay"),
                ("DELETE", "/v1/admin/dead-letters/billing.users"),
            ):
                refused = await client.request(method, path, headers=user)
                assert refused.status_code == 403, (method, path)
                assert refused.json()["error"] == "forbidden"

    async def test_admin_lists_shows_replays_and_purges(
        self, amqp_url: str, database_url: str, tmp_path: Path
    ) -> None:
        async with gateway(amqp_url, database_url, tmp_path) as (_, client):
            admin = await sign_in(client, "dev|root")
            await park(amqp_url, "billing.users", "m-1")
            await park(amqp_url, "billing.users", "m-2")

            async def listed() -> Any:
                body = (await client.get("/v1/admin/dead-letters", headers=admin)).json()
                counts = {item["queue"]: item["count"] for item in body["items"]}
                return counts if counts.get("billing.users") == 2 else None

            counts = await wait_for(listed, within=10)
            assert counts["projects.image-status"] == 0
            page = await client.get("/v1/admin/dead-letters/billing.users", headers=admin)
            assert page.status_code == 200
            assert page.json()["count"] == 2
            first = page.json()["messages"][0]
            assert first["reason"] == "malformed message: data"
            assert first["event_type"] == "user.created"
            assert first["original_queue"] == "billing.users"
            shown = await client.get("/v1/admin/dead-letters/billing.users/m-2", headers=admin)
            assert shown.json()["message_id"] == "m-2"

            replayed = await client.post(
                "/v1/admin/dead-letters/billing.users/replay",
                json={"message_id": "m-1"},
                headers=admin,
            )
            assert replayed.json() == {"replayed": 1}
            # Billing does not run here: the replayed message waits in its own queue.
            await wait_for(lambda: _has(message_ids(amqp_url, "billing.users"), "m-1"))
            purged = await client.delete(
                "/v1/admin/dead-letters/billing.users",
                params={"message_id": "m-2"},
                headers=admin,
            )
            assert purged.json() == {"purged": 1}
            missing = await client.post(
                "/v1/admin/dead-letters/billing.users/replay",
                json={"message_id": "m-2"},
                headers=admin,
            )
            assert missing.status_code == 404
            assert missing.json()["error"] == "not_found"
            unknown = await client.get("/v1/admin/dead-letters/no.such.queue", headers=admin)
            assert unknown.status_code == 404
            assert unknown.json()["error"] == "unknown_queue"

            schema = (await client.get("/openapi.json")).json()
            assert "/v1/admin/dead-letters/{queue}/replay" in schema["paths"]


async def _has(ids: Any, expected: str) -> bool:
    return expected in await ids
