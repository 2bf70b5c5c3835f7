"""Live updates heal themselves: the snapshot and a reconciler take projects' word over the log.

Projects is played by a small HTTP server that speaks its `GET /v1/live/images` protocol and
checks the gateway's signed identity; the gateway, PostgreSQL and RabbitMQ are real.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import FastAPI, Header, HTTPException, Query
from faststream.rabbit import RabbitBroker
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.identity import HEADER
from gateway.app import create_app
from gateway.repository import ImageEventRepository
from servicekit.db import create_engine, create_sessionmaker, unit_of_work
from servicekit.identity import verify_identity
from servicekit.testing import TEST_INTERNAL_SECRET, wait_for

from .conftest import (
    Journey,
    ServerThread,
    SseReader,
    User,
    connect,
    settings_for,
    sign_up,
    wait_ready,
)

pytestmark = pytest.mark.integration

UNFINISHED = ("queued", "processing")


@dataclass
class FakeProjects:
    """What projects knows: each user's images; `hang` makes it stop answering in time."""

    images: dict[uuid.UUID, dict[uuid.UUID, dict[str, Any]]] = field(default_factory=dict)
    hang: bool = False
    calls: int = 0

    def set(
        self, user: User, image: uuid.UUID, status: str, attempt: int = 1, error: str | None = None
    ) -> None:
        self.images.setdefault(user.id, {})[image] = {
            "id": str(image),
            "status": status,
            "attempt": attempt,
            "error": error,
            "has_staged": status == "ready",
            "updated_at": datetime.now(UTC).isoformat(),
        }

    def delete(self, user: User, image: uuid.UUID) -> None:
        self.images.get(user.id, {}).pop(image, None)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/live/images")
        async def live_images(
            identity: Annotated[str, Header(alias=HEADER)],
            image_id: Annotated[list[uuid.UUID] | None, Query()] = None,
            updated_since: datetime | None = None,
            limit: int = 500,
        ) -> dict[str, Any]:
            self.calls += 1
            try:
                who = verify_identity(identity, secret=TEST_INTERNAL_SECRET, audience="projects")
            except Exception as exc:
                raise HTTPException(401) from exc
            if self.hang:
                await asyncio.sleep(30)
            asked = set(image_id or ())
            rows = [
                item
                for key, item in self.images.get(who.user_id, {}).items()
                if item["status"] in UNFINISHED
                or key in asked
                or (
                    updated_since is not None
                    and datetime.fromisoformat(item["updated_at"]) >= updated_since
                )
            ]
            return {"items": rows[:limit], "complete": len(rows) <= limit}

        return app


@pytest.fixture(scope="module")
def projects(serve: Callable[..., ServerThread]) -> tuple[FakeProjects, ServerThread]:
    fake = FakeProjects()
    return fake, serve(fake.app())


@pytest.fixture
async def database_url(database_factory: Callable[..., Any]) -> str:
    """A database of its own per test, so one test's reconciler never touches another's rows."""
    return str(await database_factory("gateway"))


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, pool_size=2)
    yield engine
    await engine.dispose()


@pytest.fixture
async def gateway(
    infra: Any, database_url: str, key_dir: Path, projects: tuple[FakeProjects, ServerThread]
) -> AsyncIterator[Callable[..., Any]]:
    """Start replicas on the test's database (`await gateway(**overrides)`); stopped after."""
    started: list[ServerThread] = []

    async def start(**overrides: Any) -> ServerThread:
        values: dict[str, Any] = {
            "projects_url": projects[1].url,
            "reconcile_interval_seconds": 0.3,
            "live_reconcile_stale_seconds": 0.5,
            "live_wake_interval_seconds": 0.2,
            "live_projects_backoff_seconds": 0,
            "live_snapshot_timeout_seconds": 1,
        }
        values.update(overrides)
        server = ServerThread(create_app(settings_for(infra, database_url, key_dir, **values)))
        started.append(server.start())
        await wait_ready(server.url)
        return server

    yield start
    for server in started:
        await asyncio.to_thread(server.stop)


async def rows(db: AsyncEngine, image: uuid.UUID) -> list[tuple[str, int]]:
    async with db.connect() as conn:
        result = await conn.execute(
            text("SELECT status, attempt FROM image_events WHERE image_id = :i ORDER BY id"),
            {"i": image},
        )
        return [(r.status, r.attempt) for r in result]


async def snapshot(reader: SseReader) -> dict[str, Any]:
    await wait_for(lambda: reader.events)
    first = reader.events[0]
    assert first.event == "snapshot"
    data: dict[str, Any] = first.data
    return data


def ids(payloads: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(p["image_id"], p["status"]) for p in payloads]


class TestSnapshotFromProjects:
    async def test_a_restart_that_missed_events_then_a_new_stream_shows_the_true_status(
        self,
        gateway: Callable[..., Any],
        projects: tuple[FakeProjects, ServerThread],
        publisher: RabbitBroker,
        db: AsyncEngine,
        sse: Callable[..., Any],
    ) -> None:
        fake, _ = projects
        # No reconciler here: only the new stream's snapshot may heal the log.
        first = await gateway(reconcile_interval_seconds=600)
        alice = await sign_up(first)
        journey = Journey(publisher, alice.id)
        image = uuid.uuid4()
        fake.set(alice, image, "processing")
        await journey.processing(image)
        await wait_for(lambda: rows(db, image))

        await asyncio.to_thread(first.stop)
        # Published while no replica runs: nobody hears it.
        await journey.ready(image)
        fake.set(alice, image, "ready")
        second = await gateway(reconcile_interval_seconds=600)
        assert await rows(db, image) == [("processing", 1)]

        stream = await connect(sse, second, alice)
        data = await snapshot(stream)
        assert data["source"] == "projects"
        assert data["images"] == []
        assert ids(data["recent"]) == [(str(image), "ready")]
        # The correction follows as an ordinary event and is in the log for every replica.
        await stream.wait_statuses(1)
        assert [(e.data["image_id"], e.data["status"]) for e in stream.statuses] == [
            (str(image), "ready")
        ]
        assert await rows(db, image) == [("processing", 1), ("ready", 1)]

    async def test_a_browser_resuming_after_the_restart_gets_what_it_missed(
        self,
        gateway: Callable[..., Any],
        projects: tuple[FakeProjects, ServerThread],
        publisher: RabbitBroker,
        db: AsyncEngine,
        sse: Callable[..., Any],
    ) -> None:
        fake, _ = projects
        first = await gateway(reconcile_interval_seconds=600)
        alice = await sign_up(first)
        journey = Journey(publisher, alice.id)
        image = uuid.uuid4()
        fake.set(alice, image, "processing")
        before = await connect(sse, first, alice)
        await journey.processing(image)
        await before.wait_statuses(1)
        seen = before.last_id
        assert seen is not None

        await asyncio.to_thread(first.stop)
        await wait_for(before.ended.is_set, within=5)
        await journey.ready(image)
        fake.set(alice, image, "ready")
        second = await gateway(reconcile_interval_seconds=600)

        resumed = await connect(sse, second, alice, last_event_id=seen)
        await resumed.wait_statuses(1)
        assert [e.event for e in resumed.events] == ["image.status"]
        assert resumed.statuses[0].data["status"] == "ready"
        assert int(resumed.statuses[0].id or 0) > int(seen)
        assert await rows(db, image) == [("processing", 1), ("ready", 1)]

    async def test_a_deleted_queued_image_is_absent_from_a_new_streams_snapshot(
        self,
        gateway: Callable[..., Any],
        projects: tuple[FakeProjects, ServerThread],
        publisher: RabbitBroker,
        db: AsyncEngine,
        sse: Callable[..., Any],
    ) -> None:
        fake, _ = projects
        server = await gateway(reconcile_interval_seconds=600)
        alice = await sign_up(server)
        journey = Journey(publisher, alice.id)
        deleted, kept = uuid.uuid4(), uuid.uuid4()
        for image in (deleted, kept):
            fake.set(alice, image, "queued")
            await journey.queued(image)
            await wait_for(lambda image=image: rows(db, image))
        fake.delete(alice, deleted)

        stream = await connect(sse, server, alice)
        data = await snapshot(stream)
        assert ids(data["images"]) == [(str(kept), "queued")]
        assert data["recent"] == []
        assert await rows(db, deleted) == []
        assert await rows(db, kept) == [("queued", 1)]

    async def test_projects_unreachable_the_stream_opens_with_the_log(
        self,
        gateway: Callable[..., Any],
        publisher: RabbitBroker,
        db: AsyncEngine,
        sse: Callable[..., Any],
    ) -> None:
        server = await gateway(projects_url="http://127.0.0.1:9")
        alice = await sign_up(server)
        image = uuid.uuid4()
        await Journey(publisher, alice.id).processing(image)
        await wait_for(lambda: rows(db, image))

        stream = await connect(sse, server, alice)
        data = await snapshot(stream)
        assert data["source"] == "log"
        assert ids(data["images"]) == [(str(image), "processing")]
        await Journey(publisher, alice.id).ready(image)
        await stream.wait_statuses(1)
        assert stream.statuses[0].data["status"] == "ready"

    async def test_projects_not_answering_in_time_does_not_hang_the_stream(
        self,
        gateway: Callable[..., Any],
        projects: tuple[FakeProjects, ServerThread],
        publisher: RabbitBroker,
        db: AsyncEngine,
        sse: Callable[..., Any],
    ) -> None:
        fake, _ = projects
        server = await gateway(live_snapshot_timeout_seconds=0.5, reconcile_interval_seconds=600)
        alice = await sign_up(server)
        image = uuid.uuid4()
        await Journey(publisher, alice.id).queued(image)
        await wait_for(lambda: rows(db, image))
        fake.hang = True
        try:
            started = time.monotonic()
            stream = await connect(sse, server, alice)
            data = await snapshot(stream)
            elapsed = time.monotonic() - started
        finally:
            fake.hang = False
        assert data["source"] == "log"
        assert ids(data["images"]) == [(str(image), "queued")]
        assert elapsed < 5


class TestOrdering:
    async def test_ready_after_an_admin_retry_of_a_failed_attempt_reaches_the_stream(
        self,
        gateway: Callable[..., Any],
        publisher: RabbitBroker,
        sse: Callable[..., Any],
    ) -> None:
        server = await gateway(projects_url="http://127.0.0.1:9")
        alice = await sign_up(server)
        journey = Journey(publisher, alice.id)
        image = uuid.uuid4()
        stream = await connect(sse, server, alice)
        await journey.processing(image)
        await journey.failed(image)
        await stream.wait_statuses(2)
        await journey.processing(image)  # the retried job starts again: older than its error
        await journey.ready(image)  # the admin retry succeeded, same attempt
        await journey.failed(image, reason="late duplicate")  # stale: ready is final
        await journey.processing(image, attempt=2)  # a restage starts over
        await stream.wait_statuses(4)
        assert [(e.data["status"], e.data["attempt"]) for e in stream.statuses] == [
            ("processing", 1),
            ("error", 1),
            ("ready", 1),
            ("processing", 2),
        ]
        await journey.ready(image, attempt=1)  # an older attempt is stale
        await journey.ready(image, attempt=2)
        await stream.wait_statuses(5)
        assert [(e.data["status"], e.data["attempt"]) for e in stream.statuses][4:] == [
            ("ready", 2)
        ]


class TestReconciler:
    async def test_a_missed_ready_heals_an_open_stream_on_another_replica(
        self,
        gateway: Callable[..., Any],
        projects: tuple[FakeProjects, ServerThread],
        publisher: RabbitBroker,
        db: AsyncEngine,
        sse: Callable[..., Any],
    ) -> None:
        fake, _ = projects
        await gateway()  # reconciles
        quiet = await gateway(reconcile_interval_seconds=600)  # only wakes its streams
        alice = await sign_up(quiet)
        image, deleted = uuid.uuid4(), uuid.uuid4()
        fake.set(alice, image, "processing")
        journey = Journey(publisher, alice.id)
        await journey.processing(image)
        await journey.queued(deleted)
        await wait_for(lambda: rows(db, deleted))
        stream = await connect(sse, quiet, alice)
        assert ids((await snapshot(stream))["images"]) == [(str(image), "processing")]

        # Staging's `ready` never reached the gateway; projects has it.
        fake.set(alice, image, "ready")
        await stream.wait_statuses(1, within=15)
        assert [(e.data["image_id"], e.data["status"]) for e in stream.statuses] == [
            (str(image), "ready")
        ]
        assert await rows(db, image) == [("processing", 1), ("ready", 1)]
        # The image deleted while queued is forgotten.
        await wait_for(lambda: _empty(db, deleted), within=15)

    async def test_an_image_projects_agrees_on_is_left_alone(
        self,
        gateway: Callable[..., Any],
        projects: tuple[FakeProjects, ServerThread],
        publisher: RabbitBroker,
        db: AsyncEngine,
    ) -> None:
        fake, _ = projects
        server = await gateway()
        await gateway(projects_url="http://127.0.0.1:9")
        alice = await sign_up(server)
        image = uuid.uuid4()
        fake.set(alice, image, "processing")
        await Journey(publisher, alice.id).processing(image)
        await wait_for(lambda: rows(db, image))
        calls = fake.calls
        await wait_for(lambda: fake.calls >= calls + 3, within=15)
        assert await rows(db, image) == [("processing", 1)]


class TestStaleQuery:
    async def test_only_images_whose_latest_event_is_unfinished_and_old_are_found(
        self, db: AsyncEngine
    ) -> None:
        user = uuid.uuid4()
        stuck, finished, restaged, young, recovered = (uuid.uuid4() for _ in range(5))
        history = [
            (stuck, "queued", 1),
            (stuck, "processing", 1),
            (finished, "processing", 1),
            (finished, "ready", 1),
            (restaged, "ready", 1),
            (restaged, "queued", 2),
            (recovered, "error", 1),
            (recovered, "ready", 1),
        ]
        sessionmaker = create_sessionmaker(db)
        async with unit_of_work(sessionmaker) as session:
            repo = ImageEventRepository(session)
            for image, status, attempt in [*history, (young, "queued", 1)]:
                payload = {"image_id": str(image), "status": status, "attempt": attempt}
                row = await repo.record(
                    event_id=uuid.uuid4(),
                    user_id=user,
                    image_id=image,
                    status=status,
                    attempt=attempt,
                    payload=payload,
                )
                assert row is not None
            await session.execute(
                text(
                    "UPDATE image_events SET created_at = now() - interval '1 hour' "
                    "WHERE image_id <> :young"
                ),
                {"young": young},
            )
        now = datetime.now(UTC)
        async with unit_of_work(sessionmaker) as session:
            found = await ImageEventRepository(session).stale_unfinished(
                older_than=now - timedelta(minutes=2), since=now - timedelta(days=1), limit=10
            )
        assert sorted(found) == sorted([(user, stuck), (user, restaged)])


async def _empty(db: AsyncEngine, image: uuid.UUID) -> bool:
    return await rows(db, image) == []
