"""Staging heals itself, on real PostgreSQL and S3: settle requests, stored results reused,
deletion is final, only the lease holder's result counts, the reconciler, sweeper and retention.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
import sqlalchemy.exc
from fakes import FakeOpenAI
from PIL import Image
from sqlalchemy import select, text, update

from contracts.enums import RoomType, Style
from contracts.events import Envelope, ImageDeleted, ImageQueued, ImageSettle, parse_envelope
from contracts.reasons import FailureReason
from servicekit.messaging import EVENTS_EXCHANGE, create_broker, is_infrastructure_error
from servicekit.outbox import OutboxMessage, apply_once
from servicekit.runtime import Runtime
from servicekit.storage import Storage
from servicekit.testing import TEST_INTERNAL_SECRET, InfraUrls, running, wait_for
from staging.app import create_app
from staging.backends.base import (
    NO_OP_SUBMITTED,
    OnSubmitted,
    StageRequest,
    StageResult,
    TransientBackendError,
)
from staging.backends.offline import LocalBackend
from staging.backends.registry import build_backends
from staging.maintenance import Maintenance, Reconciled
from staging.models import Cancellation, Job
from staging.repository import JobRepository
from staging.service import DELETED_REASON, Cancellations, JobRunner, image_prefix
from staging.settings import StagingSettings

pytestmark = pytest.mark.integration

BUCKET = "realstaging-test"


class GatedBackend:
    """The local backend, counting calls; each call waits until the test opens the gate."""

    name = "local"
    models = LocalBackend.models

    def __init__(self, *, gated: bool = False) -> None:
        self.calls = 0
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.inner = LocalBackend()

    async def stage(
        self,
        request: StageRequest,
        *,
        resume_id: str | None = None,
        on_submitted: OnSubmitted = NO_OP_SUBMITTED,
    ) -> StageResult:
        """Count, wait for the gate, then stage."""
        self.calls += 1
        self.entered.set()
        await self.gate.wait()
        return await self.inner.stage(request)

    async def aclose(self) -> None:
        """Nothing to release."""


class TimingOutBackend(GatedBackend):
    """A backend whose client times out (an OSError in Python)."""

    async def stage(
        self,
        request: StageRequest,
        *,
        resume_id: str | None = None,
        on_submitted: OnSubmitted = NO_OP_SUBMITTED,
    ) -> StageResult:
        """Time out."""
        self.calls += 1
        raise TimeoutError("the read timed out")


@pytest.fixture
def make_settings(
    infra: InfraUrls, database_url: str, openai_api: FakeOpenAI
) -> Callable[..., StagingSettings]:
    """Settings of a staging worker for this test, with durations scaled down."""

    def make(**overrides: Any) -> StagingSettings:
        values: dict[str, Any] = {
            "environment": "test",
            "database_url": database_url,
            "amqp_url": infra.amqp_url,
            "internal_secret": TEST_INTERNAL_SECRET,
            "s3_endpoint": infra.s3_endpoint,
            "s3_access_key": infra.s3_access_key,
            "s3_secret_key": infra.s3_secret_key,
            "s3_bucket": BUCKET,
            "job_lease_seconds": 3,
            "job_lease_margin_seconds": 0,
            "openai_api_base": openai_api.base_url,
            "openai_api_key": openai_api.api_key,
        }
        values.update(overrides)
        return StagingSettings(**values)

    return make


@pytest.fixture
async def database_url(database_factory: Callable[..., Any]) -> str:
    """A migrated staging database for one test."""
    url: str = await database_factory("staging")
    return url


@pytest.fixture
async def runtime(make_settings: Callable[..., StagingSettings]) -> AsyncIterator[Runtime]:
    """Database connections of the workers (jobs run directly, no broker)."""
    rt = Runtime(make_settings())
    yield rt
    await rt.engine.dispose()


@pytest.fixture
async def storage(make_settings: Callable[..., StagingSettings]) -> Storage:
    """The test bucket."""
    store = Storage(make_settings())
    await store.ensure_bucket()
    return store


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (210, 200, 190)).save(buf, "JPEG")
    return buf.getvalue()


async def _queued(storage: Storage, data: bytes | None = None) -> Envelope[ImageQueued]:
    user_id = uuid.uuid4()
    key = f"uploads/{user_id}/{uuid.uuid4().hex}.jpg"
    await storage.write(key, data if data is not None else _jpeg(), "image/jpeg")
    event = ImageQueued(
        image_id=uuid.uuid4(),
        user_id=user_id,
        project_id=uuid.uuid4(),
        original_key=key,
        room_type=RoomType.BEDROOM,
        style=Style.COASTAL,
        seed=3,
    )
    return Envelope.wrap(event, producer="projects")


def _settle(envelope: Envelope[ImageQueued]) -> Envelope[ImageQueued]:
    return Envelope.wrap(ImageSettle(**envelope.data.model_dump()), producer="projects")


async def _job(runtime: Runtime) -> Job:
    async with runtime.sessionmaker() as session:
        return (await session.scalars(select(Job))).one()


async def _events(runtime: Runtime, key: str | None = None) -> list[dict[str, Any]]:
    async with runtime.sessionmaker() as session:
        stmt = select(OutboxMessage).order_by(OutboxMessage.created_at)
        if key is not None:
            stmt = stmt.where(OutboxMessage.routing_key == key)
        return [row.payload for row in await session.scalars(stmt)]


async def _routing_keys(runtime: Runtime) -> list[str]:
    return [payload["event_type"] for payload in await _events(runtime)]


async def _objects(storage: Storage, envelope: Envelope[ImageQueued]) -> list[str]:
    prefix = image_prefix(envelope.data.user_id, envelope.data.image_id)
    return sorted(obj.key for obj in await storage.list(prefix))


async def _abandoned(runtime: Runtime, envelope: Envelope[ImageQueued], **values: Any) -> None:
    """A job a dead worker held: processing, run 1, its lease lapsed (or as `values` say)."""
    event = envelope.data
    async with runtime.sessionmaker() as session:
        job = await JobRepository(session).ensure(
            event.image_id, event.user_id, event.attempt, event.model_dump(mode="json")
        )
        job.status = "processing"
        job.runs = 1
        job.backend = "local"
        job.started_at = datetime.now(UTC) - timedelta(minutes=5)
        job.lease_until = datetime.now(UTC) - timedelta(seconds=1)
        for name, value in values.items():
            setattr(job, name, value)
        await session.commit()


async def _delete_image(runtime: Runtime, storage: Storage, envelope: Envelope[Any]) -> None:
    """What the cancellation consumer does with an `image.deleted` event."""
    event = envelope.data
    deleted = Envelope.wrap(
        ImageDeleted(image_id=event.image_id, user_id=event.user_id, keys=[event.original_key]),
        producer="projects",
    )
    await apply_once(
        runtime.sessionmaker, "staging.cancellations", deleted, Cancellations(storage).forget_images
    )


class TestSettle:
    """A settle request is answered from the job's truth, never with a second backend call."""

    async def test_a_completed_job_reports_its_result_again(
        self, runtime: Runtime, storage: Storage, make_settings: Callable[..., StagingSettings]
    ) -> None:
        backend = GatedBackend()
        runner = JobRunner(runtime, storage, backend, make_settings())
        envelope = await _queued(storage)
        await runner.handle(envelope)
        await runner.handle(_settle(envelope))
        assert backend.calls == 1
        first, again = await _events(runtime, "image.ready")
        assert again["data"] == first["data"]
        assert first["data"]["size_bytes"] > 0

    async def test_a_failed_job_reports_its_reason_again(
        self, runtime: Runtime, storage: Storage, make_settings: Callable[..., StagingSettings]
    ) -> None:
        backend = GatedBackend()
        runner = JobRunner(runtime, storage, backend, make_settings())
        envelope = await _queued(storage, b"\xff\xd8\xff\xe0 not a jpeg")
        await runner.handle(envelope)
        await runner.handle(_settle(envelope))
        first, again = await _events(runtime, "image.failed")
        assert again["data"]["reason"] == first["data"]["reason"] == (await _job(runtime)).error
        assert backend.calls == 0

    async def test_a_job_that_never_started_runs(
        self, runtime: Runtime, storage: Storage, make_settings: Callable[..., StagingSettings]
    ) -> None:
        backend = GatedBackend()
        runner = JobRunner(runtime, storage, backend, make_settings())
        envelope = await _queued(storage)
        await runner.handle(_settle(envelope))
        job = await _job(runtime)
        assert (job.status, job.runs, backend.calls) == ("completed", 1, 1)
        assert await _routing_keys(runtime) == ["image.processing", "image.ready"]
        # The job keeps an image.queued payload, so an admin retry can re-publish it.
        assert ImageQueued.model_validate(job.payload_json) == envelope.data

    async def test_a_job_whose_lease_lapsed_is_taken_over(
        self, runtime: Runtime, storage: Storage, make_settings: Callable[..., StagingSettings]
    ) -> None:
        backend = GatedBackend()
        runner = JobRunner(runtime, storage, backend, make_settings())
        envelope = await _queued(storage)
        await _abandoned(runtime, envelope)
        await runner.handle(_settle(envelope))
        job = await _job(runtime)
        assert (job.status, job.runs, backend.calls) == ("completed", 2, 1)
        assert job.staged_key == f"{image_prefix(job.user_id, job.image_id)}1-2.jpg"
        assert await _routing_keys(runtime) == ["image.ready"]

    async def test_a_job_running_under_a_live_lease_is_left_to_its_holder(
        self, runtime: Runtime, storage: Storage, make_settings: Callable[..., StagingSettings]
    ) -> None:
        backend = GatedBackend()
        runner = JobRunner(runtime, storage, backend, make_settings())
        envelope = await _queued(storage)
        await _abandoned(runtime, envelope, lease_until=datetime.now(UTC) + timedelta(minutes=1))
        await asyncio.wait_for(runner.handle(_settle(envelope)), timeout=2)
        job = await _job(runtime)
        assert (job.status, job.runs, backend.calls) == ("processing", 1, 0)
        assert await _events(runtime) == []

    async def test_a_deleted_image_gets_no_answer(
        self, runtime: Runtime, storage: Storage, make_settings: Callable[..., StagingSettings]
    ) -> None:
        backend = GatedBackend()
        runner = JobRunner(runtime, storage, backend, make_settings())
        envelope = await _queued(storage)
        await _delete_image(runtime, storage, envelope)
        await runner.handle(_settle(envelope))
        assert backend.calls == 0
        assert await _events(runtime) == []


class TestStoredResults:
    """A backend's result is stored first and reused by every retry of the attempt."""

    async def test_a_failed_commit_is_retried_from_the_stored_result(
        self,
        runtime: Runtime,
        storage: Storage,
        make_settings: Callable[..., StagingSettings],
        openai_api: FakeOpenAI,
    ) -> None:
        settings = make_settings(backend="openai")
        runner = JobRunner(runtime, storage, build_backends(settings), settings)
        envelope = await _queued(storage)
        # The completing commit fails (as when the database refuses it for a while).
        async with runtime.engine.begin() as conn:
            await conn.execute(
                text(
                    "ALTER TABLE jobs ADD CONSTRAINT no_completion "
                    "CHECK (status <> 'completed') NOT VALID"
                )
            )
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            await runner.handle(envelope)
        job = await _job(runtime)
        assert (job.status, openai_api.edit_calls) == ("queued", 1)
        assert job.result_key is not None
        assert await storage.stat(job.result_key) is not None
        async with runtime.engine.begin() as conn:
            await conn.execute(text("ALTER TABLE jobs DROP CONSTRAINT no_completion"))
        await runner.handle(envelope)
        done = await _job(runtime)
        assert (done.status, done.runs, openai_api.edit_calls) == ("completed", 2, 1)
        assert done.staged_key == job.result_key
        [ready] = await _events(runtime, "image.ready")
        assert ready["data"]["staged_key"] == job.result_key
        assert ready["data"]["backend"] == "openai"
        assert await _objects(storage, envelope) == [job.result_key]

    async def test_a_backend_timeout_is_a_backend_failure_not_an_infrastructure_one(
        self, runtime: Runtime, storage: Storage, make_settings: Callable[..., StagingSettings]
    ) -> None:
        runner = JobRunner(runtime, storage, TimingOutBackend(), make_settings())
        envelope = await _queued(storage)
        with pytest.raises(TransientBackendError) as raised:
            await runner.handle(envelope)
        assert not isinstance(raised.value, OSError)
        assert (await _job(runtime)).status == "queued"


class TestGivingUp:
    """Giving up needs staging's own database; while it is away the give-up is not lost."""

    async def test_a_give_up_with_the_database_away_raises_an_infrastructure_error(
        self, storage: Storage, make_settings: Callable[..., StagingSettings]
    ) -> None:
        away = make_settings(
            database_url="postgresql+asyncpg://realstaging:realstaging@127.0.0.1:1/staging"
        )
        rt = Runtime(away)
        try:
            runner = JobRunner(rt, storage, GatedBackend(), away)
            with pytest.raises((OSError, sqlalchemy.exc.DBAPIError)) as raised:
                await runner.give_up(await _queued(storage), "TransientBackendError: 503")
        finally:
            await rt.engine.dispose()
        # So the consumer retries the give-up later instead of parking without image.failed.
        assert is_infrastructure_error(raised.value), repr(raised.value)

    async def test_a_give_up_leaves_a_job_another_worker_holds_to_it(
        self, runtime: Runtime, storage: Storage, make_settings: Callable[..., StagingSettings]
    ) -> None:
        runner = JobRunner(runtime, storage, GatedBackend(), make_settings())
        envelope = await _queued(storage)
        await _abandoned(runtime, envelope, lease_until=datetime.now(UTC) + timedelta(minutes=1))
        await runner.give_up(envelope, "TransientBackendError: 503")
        assert (await _job(runtime)).status == "processing"
        assert await _events(runtime) == []
        await _abandoned(runtime, envelope)
        await runner.give_up(envelope, "TransientBackendError: 503")
        [failed] = await _events(runtime, "image.failed")
        job = await _job(runtime)
        assert failed["data"]["reason"] == job.error == FailureReason.INTERNAL
        assert "503" in (job.detail or "")


class TestDeletion:
    """Deleting an image stops its job: nothing stored, nothing reported."""

    async def test_deleting_an_image_mid_job_stores_nothing_and_reports_nothing(
        self, runtime: Runtime, storage: Storage, make_settings: Callable[..., StagingSettings]
    ) -> None:
        backend = GatedBackend(gated=True)
        runner = JobRunner(runtime, storage, backend, make_settings())
        envelope = await _queued(storage)
        running = asyncio.create_task(runner.handle(envelope))
        await asyncio.wait_for(backend.entered.wait(), timeout=10)
        await _delete_image(runtime, storage, envelope)
        backend.gate.set()
        await asyncio.wait_for(running, timeout=15)
        job = await _job(runtime)
        assert (job.status, job.error, job.staged_key) == ("failed", DELETED_REASON, None)
        assert await _routing_keys(runtime) == ["image.processing"]
        assert await _objects(storage, envelope) == []
        assert await storage.stat(envelope.data.original_key) is None

    async def test_a_deletion_after_the_result_is_stored_removes_it(
        self, runtime: Runtime, storage: Storage, make_settings: Callable[..., StagingSettings]
    ) -> None:
        backend = GatedBackend()
        runner = JobRunner(runtime, storage, backend, make_settings())
        envelope = await _queued(storage)
        # The completing commit fails, so the stored result waits for a retry...
        async with runtime.engine.begin() as conn:
            await conn.execute(
                text(
                    "ALTER TABLE jobs ADD CONSTRAINT no_completion "
                    "CHECK (status <> 'completed') NOT VALID"
                )
            )
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            await runner.handle(envelope)
        assert len(await _objects(storage, envelope)) == 1
        async with runtime.engine.begin() as conn:
            await conn.execute(text("ALTER TABLE jobs DROP CONSTRAINT no_completion"))
        # ...and the image is deleted before it comes.
        await _delete_image(runtime, storage, envelope)
        await runner.handle(envelope)
        assert await _objects(storage, envelope) == []
        assert (await _job(runtime)).status == "failed"
        assert "image.ready" not in await _routing_keys(runtime)
        assert backend.calls == 1

    async def test_deletion_removes_the_objects_of_every_run_and_attempt(
        self, runtime: Runtime, storage: Storage, make_settings: Callable[..., StagingSettings]
    ) -> None:
        runner = JobRunner(runtime, storage, GatedBackend(), make_settings())
        envelope = await _queued(storage)
        await runner.handle(envelope)
        prefix = image_prefix(envelope.data.user_id, envelope.data.image_id)
        for stray in ("1-7.jpg", "2-1.jpg", "1.jpg"):
            await storage.write(prefix + stray, b"x", "image/jpeg")
        assert len(await _objects(storage, envelope)) == 4
        await _delete_image(runtime, storage, envelope)
        assert await _objects(storage, envelope) == []


class TestLeaseLoss:
    """Only the lease holder's result is recorded; a worker that lost the job cleans up."""

    async def test_the_loser_removes_its_object_and_the_winner_result_stands(
        self, runtime: Runtime, storage: Storage, make_settings: Callable[..., StagingSettings]
    ) -> None:
        slow = GatedBackend(gated=True)
        # A long lease: the slow worker does not notice the takeover before it stores.
        loser = JobRunner(runtime, storage, slow, make_settings(job_lease_seconds=60))
        winner_backend = GatedBackend()
        winner = JobRunner(runtime, storage, winner_backend, make_settings())
        envelope = await _queued(storage)
        running = asyncio.create_task(loser.handle(envelope))
        await asyncio.wait_for(slow.entered.wait(), timeout=10)
        async with runtime.sessionmaker() as session:
            await session.execute(
                update(Job).values(lease_until=datetime.now(UTC) - timedelta(seconds=1))
            )
            await session.commit()
        await winner.handle(_settle(envelope))
        slow.gate.set()
        await asyncio.wait_for(running, timeout=15)
        job = await _job(runtime)
        winner_key = f"{image_prefix(job.user_id, job.image_id)}1-2.jpg"
        assert (job.status, job.runs, job.staged_key) == ("completed", 2, winner_key)
        assert await _objects(storage, envelope) == [winner_key]
        [ready] = await _events(runtime, "image.ready")
        assert ready["data"]["staged_key"] == winner_key
        assert (slow.calls, winner_backend.calls) == (1, 1)


class TestLostDelivery:
    """A delivery cancelled mid-job (the broker connection closed) does not lose the call."""

    async def test_the_job_finishes_and_the_redelivery_does_not_call_again(
        self, runtime: Runtime, storage: Storage, make_settings: Callable[..., StagingSettings]
    ) -> None:
        backend = GatedBackend(gated=True)
        runner = JobRunner(runtime, storage, backend, make_settings())
        envelope = await _queued(storage)
        delivery = asyncio.create_task(runner.handle(envelope))
        await asyncio.wait_for(backend.entered.wait(), timeout=10)
        # What aiormq does to a consumer's task when its channel closes.
        delivery.cancel()
        with pytest.raises(asyncio.CancelledError):
            await delivery
        backend.gate.set()

        async def completed() -> bool:
            return (await _job(runtime)).status == "completed"

        await wait_for(completed, within=15)
        await runner.handle(envelope)
        assert backend.calls == 1
        assert await _routing_keys(runtime) == ["image.processing", "image.ready"]


async def _publish(infra: InfraUrls, envelope: Envelope[ImageQueued]) -> None:
    broker = create_broker(infra.amqp_url, app_id="test")
    await broker.connect()
    try:
        await broker.publish(
            envelope.model_dump_json().encode(),
            exchange=EVENTS_EXCHANGE,
            routing_key=envelope.event_type,
            persist=True,
            message_id=str(envelope.event_id),
            content_type="application/json",
        )
    finally:
        await broker.stop()


def _queue_depth(vhost: str, queue: str) -> int:
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "--no-table-headers", "name", "messages"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    for line in listed.splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count)
    raise AssertionError(f"no queue {queue} in {vhost}")


class TestBrokerLoss:
    """The broker closes the worker's connection while a paid call runs: it is not paid twice."""

    async def test_the_job_finishes_and_its_redelivery_is_acknowledged_without_a_call(
        self,
        infra: InfraUrls,
        runtime: Runtime,
        storage: Storage,
        make_settings: Callable[..., StagingSettings],
        openai_api: FakeOpenAI,
    ) -> None:
        vhost = urlsplit(infra.amqp_url).path.lstrip("/")
        # Closing connections is only safe in this run's own virtual host.
        assert vhost.startswith("rs-test-"), infra.amqp_url
        openai_api.delay_seconds = 2.0
        envelope = await _queued(storage)
        app = create_app(make_settings(backend="openai"))
        async with running(app):
            await wait_for(app.state.runtime.broker_ready.is_set, within=30)
            await _publish(infra, envelope)
            await wait_for(lambda: openai_api.started >= 1, within=30)
            await asyncio.to_thread(
                subprocess.run,
                ["rabbitmqctl", "-q", "close_all_connections", "-p", vhost, "test: broker loss"],
                check=True,
                capture_output=True,
                timeout=60,
            )

            async def completed() -> bool:
                return (await _job(runtime)).status == "completed"

            await wait_for(completed, within=30)
            # The redelivered message is acknowledged (the queue empties) without a new call.

            async def drained() -> bool:
                return await asyncio.to_thread(_queue_depth, vhost, "staging.jobs") == 0

            await wait_for(drained, within=30, interval=0.5)
        assert (openai_api.started, openai_api.edit_calls) == (1, 1)
        job = await _job(runtime)
        assert job.runs == 1
        assert len(await _events(runtime, "image.ready")) == 1


class TestReconciler:
    """Jobs nobody works on are settled again, or failed with a reason after a deadline."""

    async def test_an_expired_job_is_run_again_from_its_payload(
        self, runtime: Runtime, storage: Storage, make_settings: Callable[..., StagingSettings]
    ) -> None:
        settings = make_settings()
        backend = GatedBackend()
        runner = JobRunner(runtime, storage, backend, settings)
        maintenance = Maintenance(runtime.sessionmaker, storage, settings)
        envelope = await _queued(storage)
        await _abandoned(runtime, envelope)
        assert await maintenance.reconcile_once() == Reconciled(resettled=1)
        assert (await _job(runtime)).status == "queued"
        # Handed back, the job is not asked for again until it is stale.
        assert await maintenance.reconcile_once() == Reconciled()
        [request] = await _events(runtime, "image.settle")
        settle = cast("Envelope[ImageQueued]", parse_envelope(request, ImageSettle))
        assert settle.data.model_dump() == envelope.data.model_dump()
        await runner.handle(settle)
        job = await _job(runtime)
        assert (job.status, job.runs, backend.calls) == ("completed", 2, 1)
        assert "image.ready" in await _routing_keys(runtime)

    async def test_a_queued_job_left_untouched_is_settled(
        self, runtime: Runtime, storage: Storage, make_settings: Callable[..., StagingSettings]
    ) -> None:
        settings = make_settings(job_stale_seconds=60)
        maintenance = Maintenance(runtime.sessionmaker, storage, settings)
        envelope = await _queued(storage)
        await _abandoned(runtime, envelope, status="queued", lease_until=None)
        assert await maintenance.reconcile_once() == Reconciled()
        async with runtime.sessionmaker() as session:
            await session.execute(
                update(Job).values(updated_at=datetime.now(UTC) - timedelta(minutes=2))
            )
            await session.commit()
        assert await maintenance.reconcile_once() == Reconciled(resettled=1)

    async def test_a_job_past_its_deadline_fails_with_a_reason(
        self, runtime: Runtime, storage: Storage, make_settings: Callable[..., StagingSettings]
    ) -> None:
        settings = make_settings(job_deadline_seconds=3600)
        maintenance = Maintenance(runtime.sessionmaker, storage, settings)
        envelope = await _queued(storage)
        await _abandoned(runtime, envelope, created_at=datetime.now(UTC) - timedelta(hours=2))
        assert await maintenance.reconcile_once() == Reconciled(failed=1)
        job = await _job(runtime)
        [failed] = await _events(runtime, "image.failed")
        assert job.status == "failed"
        assert failed["data"]["reason"] == job.error == FailureReason.TOOK_TOO_LONG
        assert "not finished within 1 hours" in (job.detail or "")

    async def test_a_deleted_image_job_is_closed_silently(
        self, runtime: Runtime, storage: Storage, make_settings: Callable[..., StagingSettings]
    ) -> None:
        maintenance = Maintenance(runtime.sessionmaker, storage, make_settings())
        envelope = await _queued(storage)
        await _abandoned(runtime, envelope)
        async with runtime.sessionmaker() as session:
            session.add(Cancellation(image_id=envelope.data.image_id))
            await session.commit()
        assert await maintenance.reconcile_once() == Reconciled(deleted=1)
        assert (await _job(runtime)).error == DELETED_REASON
        assert await _events(runtime) == []


class TestSweeper:
    """Orphaned staged objects, old jobs and old cancellations are removed."""

    async def test_orphans_go_and_owned_objects_stay(
        self, runtime: Runtime, storage: Storage, make_settings: Callable[..., StagingSettings]
    ) -> None:
        settings = make_settings(orphan_grace_seconds=0, sweep_batch=100_000)
        runner = JobRunner(runtime, storage, GatedBackend(), settings)
        maintenance = Maintenance(runtime.sessionmaker, storage, settings)
        envelope = await _queued(storage)
        await runner.handle(envelope)
        staged = (await _job(runtime)).staged_key or ""
        prefix = image_prefix(envelope.data.user_id, envelope.data.image_id)
        crashed_run = prefix + "1-9.jpg"
        await storage.write(crashed_run, b"x", "image/jpeg")
        # A photo whose job retention deleted: no row says it is an orphan, so it stays.
        unknown = f"staged/{uuid.uuid4()}/{uuid.uuid4()}/1-1.jpg"
        await storage.write(unknown, b"x", "image/jpeg")
        deleted = await _queued(storage)
        deleted_key = image_prefix(deleted.data.user_id, deleted.data.image_id) + "1-1.jpg"
        await storage.write(deleted_key, b"x", "image/jpeg")
        async with runtime.sessionmaker() as session:
            session.add(Cancellation(image_id=deleted.data.image_id))
            await session.commit()

        async def swept() -> bool:
            result = await maintenance.sweep_once()
            return result is not None and await storage.stat(deleted_key) is None

        await wait_for(swept, within=10)
        assert await storage.stat(crashed_run) is None
        assert await storage.stat(staged) is not None
        assert await storage.stat(unknown) is not None
        await storage.remove(unknown)

    async def test_old_jobs_and_cancellations_are_deleted(
        self, runtime: Runtime, storage: Storage, make_settings: Callable[..., StagingSettings]
    ) -> None:
        settings = make_settings(
            job_retention_seconds=3600,
            cancellation_retention_seconds=3600,
            orphan_grace_seconds=3600,
        )
        runner = JobRunner(runtime, storage, GatedBackend(), settings)
        maintenance = Maintenance(runtime.sessionmaker, storage, settings)
        old, recent = await _queued(storage), await _queued(storage)
        await runner.handle(old)
        await runner.handle(recent)
        long_ago = datetime.now(UTC) - timedelta(hours=2)
        async with runtime.sessionmaker() as session:
            await session.execute(
                update(Job).where(Job.image_id == old.data.image_id).values(updated_at=long_ago)
            )
            session.add(Cancellation(image_id=uuid.uuid4(), cancelled_at=long_ago))
            session.add(Cancellation(image_id=uuid.uuid4()))
            await session.commit()
        swept = await maintenance.sweep_once()
        assert swept is not None
        assert (swept.jobs_deleted, swept.cancellations_deleted) == (1, 1)
        async with runtime.sessionmaker() as session:
            remaining = (await session.scalars(select(Job.image_id))).all()
            cancellations = (await session.scalars(select(Cancellation))).all()
        assert remaining == [recent.data.image_id]
        assert len(cancellations) == 1
        # The completed job's photo belongs to the image now: retention leaves it alone.
        assert await _objects(storage, old) != []
