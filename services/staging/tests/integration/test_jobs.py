"""Staging jobs on real PostgreSQL and S3: once per attempt, failures with reasons."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select

from contracts.enums import RoomType, Style
from contracts.events import Envelope, ImageQueued
from contracts.reasons import FailureReason
from servicekit.outbox import OutboxMessage
from servicekit.runtime import Runtime
from servicekit.storage import Storage
from servicekit.testing import TEST_INTERNAL_SECRET, InfraUrls
from staging.backends.base import (
    NO_OP_SUBMITTED,
    OnSubmitted,
    StageRequest,
    StageResult,
    TransientBackendError,
)
from staging.backends.offline import LocalBackend
from staging.models import Job
from staging.service import JobRunner
from staging.settings import StagingSettings

pytestmark = pytest.mark.integration


class CountingBackend:
    """The local backend, counting how often it is asked to stage."""

    name = "local"

    def __init__(self) -> None:
        self.calls = 0
        self.inner = LocalBackend()

    models = LocalBackend.models

    async def stage(
        self,
        request: StageRequest,
        *,
        resume_id: str | None = None,
        on_submitted: OnSubmitted = NO_OP_SUBMITTED,
    ) -> StageResult:
        """Count, then stage."""
        self.calls += 1
        await asyncio.sleep(0.2)  # hold the job long enough for duplicates to overlap
        return await self.inner.stage(request)

    async def aclose(self) -> None:
        """Nothing to release."""


@pytest.fixture
async def settings(infra: InfraUrls, database_factory: Callable[..., Any]) -> StagingSettings:
    """Settings for one test's staging worker."""
    return StagingSettings(
        environment="test",
        database_url=await database_factory("staging"),
        amqp_url=infra.amqp_url,
        internal_secret=TEST_INTERNAL_SECRET,
        s3_endpoint=infra.s3_endpoint,
        s3_access_key=infra.s3_access_key,
        s3_secret_key=infra.s3_secret_key,
        s3_bucket="realstaging-test",
    )


@pytest.fixture
async def runtime(settings: StagingSettings) -> AsyncIterator[Runtime]:
    """Database connections of the worker (no broker needed to run jobs directly)."""
    rt = Runtime(settings)
    yield rt
    await rt.engine.dispose()


@pytest.fixture
async def storage(settings: StagingSettings) -> Storage:
    """The test bucket."""
    store = Storage(settings)
    await store.ensure_bucket()
    return store


async def _queued(storage: Storage, data: bytes) -> Envelope[ImageQueued]:
    user_id = uuid.uuid4()
    key = f"uploads/{user_id}/{uuid.uuid4().hex}.jpg"
    await storage.write(key, data, "image/jpeg")
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


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (210, 200, 190)).save(buf, "JPEG")
    return buf.getvalue()


async def _outbox(runtime: Runtime) -> list[str]:
    async with runtime.sessionmaker() as session:
        rows = await session.scalars(select(OutboxMessage).order_by(OutboxMessage.created_at))
        return [row.routing_key for row in rows]


class TestJobRunner:
    """A job runs once per attempt and reports what happened."""

    async def test_the_same_event_twice_gives_one_job_run_and_one_backend_call(
        self, runtime: Runtime, storage: Storage, settings: StagingSettings
    ) -> None:
        backend = CountingBackend()
        runner = JobRunner(runtime, storage, backend, settings)
        envelope = await _queued(storage, _jpeg())
        await asyncio.gather(runner.handle(envelope), runner.handle(envelope))
        await runner.handle(envelope)
        assert backend.calls == 1
        async with runtime.sessionmaker() as session:
            jobs = (await session.scalars(select(Job))).all()
        assert len(jobs) == 1
        assert (jobs[0].status, jobs[0].type, jobs[0].runs) == ("completed", "stage:run", 1)
        assert await _outbox(runtime) == ["image.processing", "image.ready"]
        staged = await storage.read(jobs[0].staged_key or "")
        assert Image.open(io.BytesIO(staged)).format == "JPEG"

    async def test_a_corrupt_photo_fails_at_once_with_a_reason(
        self, runtime: Runtime, storage: Storage, settings: StagingSettings
    ) -> None:
        backend = CountingBackend()
        runner = JobRunner(runtime, storage, backend, settings)
        envelope = await _queued(storage, b"\xff\xd8\xff\xe0 this is not really a jpeg")
        await runner.handle(envelope)
        assert backend.calls == 0
        async with runtime.sessionmaker() as session:
            job = (await session.scalars(select(Job))).one()
            failed = (
                await session.scalars(
                    select(OutboxMessage).where(OutboxMessage.routing_key == "image.failed")
                )
            ).one()
        assert job.status == "failed"
        assert job.error in (FailureReason.DAMAGED_PHOTO, FailureReason.UNSUPPORTED_PHOTO)
        assert job.detail
        assert failed.payload["data"]["reason"] == job.error

    async def test_a_transient_failure_hands_the_job_back_for_a_retry(
        self, runtime: Runtime, storage: Storage, settings: StagingSettings
    ) -> None:
        runner = JobRunner(runtime, storage, CountingBackend(), settings)
        envelope = await _queued(storage, _jpeg())
        await storage.remove(envelope.data.original_key)
        # A backend-class failure (the bounded ladder, then image.failed), not days of
        # infrastructure retries: a missing original does not come back by itself.
        with pytest.raises(TransientBackendError, match=r"does not exist"):
            await runner.handle(envelope)
        async with runtime.sessionmaker() as session:
            job = (await session.scalars(select(Job))).one()
        assert job.status == "queued"
        assert job.lease_until is None
