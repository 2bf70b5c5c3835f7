"""Live updates end to end: a real broker, real uvicorn servers, real SSE clients."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from faststream.rabbit import RabbitBroker
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway import tickets
from gateway.app import create_app
from servicekit.db import create_engine
from servicekit.testing import wait_for

from .conftest import (
    Journey,
    ServerThread,
    SseReader,
    User,
    connect,
    settings_for,
    sign_up,
    summary,
    wait_ready,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def database_url(database_factory: Callable[..., Any]) -> str:
    return str(await database_factory("gateway"))


@pytest.fixture(scope="module")
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, pool_size=2)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="module")
async def replicas(
    infra: Any,
    database_url: str,
    key_dir: Path,
    serve: Callable[..., ServerThread],
) -> list[ServerThread]:
    """Two gateway replicas: same database, same broker, different ports."""
    servers = [serve(create_app(settings_for(infra, database_url, key_dir))) for _ in range(2)]
    for server in servers:
        await wait_ready(server.url)
    return servers


@pytest.fixture
async def make_user(replicas: list[ServerThread]) -> Callable[[], Any]:
    async def make() -> User:
        return await sign_up(replicas[0])

    return make


class TestLiveUpdates:
    async def test_clients_before_during_and_after_see_every_status_in_order(
        self,
        replicas: list[ServerThread],
        publisher: RabbitBroker,
        make_user: Callable[[], Any],
        sse: Callable[..., Any],
    ) -> None:
        alice = await make_user()
        journey = Journey(publisher, alice.id)
        image = uuid.uuid4()

        before = await connect(sse, replicas[0], alice)
        await wait_for(lambda: before.events)
        snapshot = before.events[0]
        assert snapshot.event == "snapshot"
        assert snapshot.data["images"] == []
        assert before.retry == "3000"
        assert before.response.headers["content-type"].startswith("text/event-stream")
        assert before.response.headers["cache-control"] == "no-cache"
        assert before.response.headers["x-accel-buffering"] == "no"
        assert before.response.headers["x-request-id"]

        await journey.processing(image)
        await before.wait_statuses(1)
        during = await connect(sse, replicas[1], alice)
        await wait_for(lambda: during.events)
        assert during.events[0].event == "snapshot"
        unfinished = during.events[0].data["images"]
        assert [(i["image_id"], i["status"]) for i in unfinished] == [(str(image), "processing")]
        assert during.events[0].id == before.statuses[0].id

        await journey.ready(image)
        await before.wait_statuses(2)
        await during.wait_statuses(1)
        assert summary(before) == [(str(image), "processing"), (str(image), "ready")]
        assert summary(during) == [(str(image), "ready")]
        ready = before.statuses[1].data
        assert ready["staged"] is True
        assert ready["attempt"] == 1
        assert "occurred_at" in ready
        assert during.statuses[0].id == before.statuses[1].id

        after = await connect(sse, replicas[0], alice, last_event_id=snapshot.id)
        await after.wait_statuses(2)
        assert summary(after) == summary(before)
        assert [e.id for e in after.statuses] == [e.id for e in before.statuses]
        fresh = await connect(sse, replicas[1], alice)
        await wait_for(lambda: fresh.events)
        assert fresh.events[0].data["images"] == []
        assert fresh.events[0].id == before.statuses[-1].id

    async def test_reconnecting_with_last_event_id_misses_nothing(
        self,
        replicas: list[ServerThread],
        publisher: RabbitBroker,
        make_user: Callable[[], Any],
        sse: Callable[..., Any],
    ) -> None:
        alice = await make_user()
        journey = Journey(publisher, alice.id)
        first, second = uuid.uuid4(), uuid.uuid4()
        stream = await connect(sse, replicas[0], alice)
        await journey.processing(first)
        await stream.wait_statuses(1)
        seen = stream.last_id
        await stream.close()

        await journey.ready(first)
        await journey.processing(second)
        failed = await journey.failed(second, reason="The photo could not be read.")

        # Resumed on the other replica, which recorded none of these itself necessarily.
        resumed = await connect(sse, replicas[1], alice, last_event_id=seen)
        await resumed.wait_statuses(3)
        assert summary(resumed) == [
            (str(first), "ready"),
            (str(second), "processing"),
            (str(second), "error"),
        ]
        assert resumed.statuses[2].data["error"] == "The photo could not be read."
        assert resumed.statuses[2].data["staged"] is False
        ids = [int(e.id or 0) for e in resumed.statuses]
        assert ids == sorted(ids)
        assert ids[0] > int(seen or 0)
        assert all(e.event != "snapshot" for e in resumed.events)

        third = uuid.uuid4()
        await journey.processing(third)
        await resumed.wait_statuses(4)
        assert summary(resumed)[3] == (str(third), "processing")
        assert failed.event_id  # published before the reconnect, delivered once
        assert len(resumed.statuses) == 4

    async def test_a_user_never_sees_another_users_events(
        self,
        replicas: list[ServerThread],
        publisher: RabbitBroker,
        make_user: Callable[[], Any],
        sse: Callable[..., Any],
    ) -> None:
        alice, bob = await make_user(), await make_user()
        alices, bobs = uuid.uuid4(), uuid.uuid4()
        bob_stream = await connect(sse, replicas[0], bob)
        alice_stream = await connect(sse, replicas[0], alice)
        await Journey(publisher, alice.id).processing(alices)
        await Journey(publisher, alice.id).ready(alices)
        await Journey(publisher, bob.id).processing(bobs)
        await bob_stream.wait_statuses(1)
        await alice_stream.wait_statuses(2)
        assert summary(bob_stream) == [(str(bobs), "processing")]
        assert {i for i, _ in summary(alice_stream)} == {str(alices)}
        replay = await connect(sse, replicas[1], bob, last_event_id="0")
        await replay.wait_statuses(1)
        assert {i for i, _ in summary(replay)} == {str(bobs)}

    async def test_every_replica_delivers_to_its_own_clients_once(
        self,
        replicas: list[ServerThread],
        publisher: RabbitBroker,
        make_user: Callable[[], Any],
        sse: Callable[..., Any],
        db: AsyncEngine,
    ) -> None:
        alice = await make_user()
        journey = Journey(publisher, alice.id)
        on_first = await connect(sse, replicas[0], alice)
        on_second = await connect(sse, replicas[1], alice)
        images = [uuid.uuid4() for _ in range(5)]
        for image in images:
            await journey.processing(image)
            await journey.ready(image)
        await on_first.wait_statuses(10)
        await on_second.wait_statuses(10)
        # Each image's statuses come in order; across images, the order is whichever replica
        # recorded an event first, but it is the same order for every client.
        for stream in (on_first, on_second):
            for image in images:
                mine = [status for i, status in summary(stream) if i == str(image)]
                assert mine == ["processing", "ready"]
        assert summary(on_first) == summary(on_second)
        assert [e.id for e in on_first.statuses] == [e.id for e in on_second.statuses]
        async with db.connect() as conn:
            rows = (
                await conn.execute(
                    text("SELECT count(*) FROM image_events WHERE user_id = :u"), {"u": alice.id}
                )
            ).scalar()
        assert rows == 10

    async def test_duplicate_and_stale_events_are_not_streamed(
        self,
        replicas: list[ServerThread],
        publisher: RabbitBroker,
        make_user: Callable[[], Any],
        sse: Callable[..., Any],
    ) -> None:
        alice = await make_user()
        journey = Journey(publisher, alice.id)
        image = uuid.uuid4()
        stream = await connect(sse, replicas[0], alice)
        ready = await journey.ready(image)
        await journey.send(ready.data, event_id=ready.event_id)
        await journey.processing(image)  # late: the image is already ready
        await journey.processing(image, attempt=2)  # a restage starts over
        await stream.wait_statuses(2)
        assert [(e.data["status"], e.data["attempt"]) for e in stream.statuses] == [
            ("ready", 1),
            ("processing", 2),
        ]

    async def test_idle_streams_get_heartbeats(
        self, replicas: list[ServerThread], make_user: Callable[[], Any], sse: Callable[..., Any]
    ) -> None:
        alice = await make_user()
        stream: SseReader = await sse(f"{replicas[1].url}/v1/events", headers=alice.auth)
        assert stream.response.status_code == 200
        await wait_for(lambda: "ping" in stream.comments, within=5)


class TestStreamAuthentication:
    async def test_a_ticket_opens_one_stream_only(
        self, replicas: list[ServerThread], make_user: Callable[[], Any], sse: Callable[..., Any]
    ) -> None:
        alice = await make_user()
        ticket = await alice.ticket(replicas[0].url)
        first = await sse(f"{replicas[0].url}/v1/events", params={"ticket": ticket})
        assert first.response.status_code == 200
        again = await sse(f"{replicas[1].url}/v1/events", params={"ticket": ticket})
        assert again.response.status_code == 401
        assert again.response.json()["error"] == "invalid_ticket"

    @pytest.mark.parametrize("case", ["garbage", "expired", "wrong_audience", "wrong_key"])
    async def test_bad_tickets_are_refused(
        self,
        replicas: list[ServerThread],
        make_user: Callable[[], Any],
        sse: Callable[..., Any],
        infra: Any,
        database_url: str,
        key_dir: Path,
        case: str,
    ) -> None:
        alice = await make_user()
        settings = settings_for(infra, database_url, key_dir)
        now = int(time.time())
        claims = {
            "iss": tickets.ISSUER,
            "aud": tickets.AUDIENCE,
            "sub": str(alice.id),
            "jti": str(uuid.uuid4()),
            "iat": now,
            "exp": now + 60,
        }
        key: bytes = settings.ticket_key
        if case == "expired":
            claims |= {"iat": now - 120, "exp": now - 60}
        elif case == "wrong_audience":
            claims["aud"] = "projects"
        elif case == "wrong_key":
            key = b"k" * 32
        raw = "not.a.ticket" if case == "garbage" else jwt.encode(claims, key, algorithm="HS256")
        response = await sse(f"{replicas[0].url}/v1/events", params={"ticket": raw})
        assert response.response.status_code == 401
        assert response.response.json()["error"] == "invalid_ticket"

    async def test_access_tokens_in_the_url_are_refused(
        self, replicas: list[ServerThread], make_user: Callable[[], Any], sse: Callable[..., Any]
    ) -> None:
        alice = await make_user()
        stream = await sse(f"{replicas[0].url}/v1/events", params={"access_token": alice.token})
        assert stream.response.status_code == 401
        assert stream.response.json()["error"] == "unauthorized"
        anonymous = await sse(f"{replicas[0].url}/v1/events")
        assert anonymous.response.status_code == 401
        assert anonymous.response.headers["www-authenticate"] == "Bearer"


class TestShutdown:
    async def test_streams_end_cleanly_when_the_replica_stops(
        self,
        infra: Any,
        database_url: str,
        key_dir: Path,
        serve: Callable[..., ServerThread],
        replicas: list[ServerThread],
        make_user: Callable[[], Any],
        sse: Callable[..., Any],
    ) -> None:
        server = serve(create_app(settings_for(infra, database_url, key_dir)))
        await wait_ready(server.url)
        alice = await make_user()
        stream = await connect(sse, server, alice)
        await wait_for(lambda: stream.events)
        started = time.monotonic()
        server.call_soon(server.app.state.gateway.live.close)
        await wait_for(stream.ended.is_set, within=5)
        assert time.monotonic() - started < 5
        refused = await sse(f"{server.url}/v1/events", headers=alice.auth)
        assert refused.response.status_code == 503
