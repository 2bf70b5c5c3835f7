"""Running staging jobs: claim once, stage, store, report; never twice for one attempt."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from contracts.enums import JobStatus
from contracts.events import Envelope, ImageFailed, ImageProcessing, ImageQueued, ImageReady
from servicekit.db import unit_of_work
from servicekit.messaging import PermanentError
from servicekit.outbox import add_event
from servicekit.runtime import Runtime
from servicekit.storage import Storage
from staging.backends.base import StageRequest, StagingBackend
from staging.imaging import add_disclosure, decode, encode_jpeg
from staging.models import Job
from staging.repository import JobRepository
from staging.settings import StagingSettings

logger = logging.getLogger(__name__)

PRODUCER = "staging"


def staged_key(event: ImageQueued, extension: str) -> str:
    """Where the staged photo of one attempt is stored."""
    return f"staged/{event.user_id}/{event.image_id}/{event.attempt}{extension}"


@dataclass(frozen=True)
class Claim:
    """A job this worker now holds the lease on."""

    job_id: uuid.UUID


class JobRunner:
    """Stages images from `image.queued` events."""

    def __init__(
        self,
        runtime: Runtime,
        storage: Storage,
        backend: StagingBackend,
        settings: StagingSettings,
    ) -> None:
        self.runtime = runtime
        self.storage = storage
        self.backend = backend
        self.settings = settings

    async def handle(self, envelope: Envelope[ImageQueued]) -> None:
        """Run the job of this event unless it already ran or another worker holds it."""
        event = envelope.data
        claim = await self._claim(envelope)
        if claim is None:
            return
        started = time.perf_counter()
        try:
            stored_key, size, model, cost = await self._stage(event)
        except PermanentError as exc:
            await self.fail(envelope, str(exc))
            return
        except BaseException:
            await self._release(claim)
            raise
        duration_ms = round((time.perf_counter() - started) * 1000)
        await self._complete(envelope, claim, stored_key, size, model, cost, duration_ms)

    async def _claim(self, envelope: Envelope[ImageQueued]) -> Claim | None:
        event = envelope.data
        now = datetime.now(UTC)
        async with unit_of_work(self.runtime.sessionmaker) as session:
            jobs = JobRepository(session)
            job = await jobs.ensure(
                event.image_id, event.user_id, event.attempt, event.model_dump(mode="json")
            )
            if job.status in (JobStatus.COMPLETED, JobStatus.FAILED):
                logger.info("job %s already %s; ignoring duplicate", job.id, job.status)
                return None
            if job.status == JobStatus.PROCESSING and job.lease_until and job.lease_until > now:
                # Another worker holds it; its own unacked delivery comes back if it dies.
                logger.info("job %s is running elsewhere; ignoring duplicate", job.id)
                return None
            if await jobs.is_cancelled(event.image_id):
                job.status = JobStatus.FAILED
                job.error = "The image was deleted."
                job.finished_at = now
                return None
            first_run = job.started_at is None
            job.status = JobStatus.PROCESSING
            job.started_at = job.started_at or now
            job.lease_until = now + timedelta(seconds=self.settings.job_lease_seconds)
            job.runs += 1
            job.backend = self.backend.name
            job.updated_at = now
            if first_run:
                add_event(
                    session,
                    ImageProcessing(
                        image_id=event.image_id,
                        user_id=event.user_id,
                        attempt=event.attempt,
                        backend=self.backend.name,
                    ),
                    producer=PRODUCER,
                    correlation_id=envelope.correlation_id,
                )
            claim = Claim(job_id=job.id)
        self.runtime.relay.wake()
        return claim

    async def _stage(self, event: ImageQueued) -> tuple[str, int, str | None, float | None]:
        data = await self.storage.read(event.original_key, max_bytes=self.settings.max_input_bytes)
        photo = await asyncio.to_thread(
            decode,
            data,
            max_pixels=self.settings.max_input_pixels,
            max_side=self.settings.max_output_side,
        )
        seed = event.seed if event.seed is not None else int(event.image_id) % 4_294_967_296
        result = await self.backend.stage(
            StageRequest(photo=photo, room_type=event.room_type, style=event.style, seed=seed)
        )
        encoded = await asyncio.to_thread(self._finish, result.photo)
        key = staged_key(event, encoded.extension)
        await self.storage.write(key, encoded.data, encoded.content_type)
        return key, len(encoded.data), result.model, result.cost_usd

    def _finish(self, photo: Any) -> Any:
        if self.settings.disclosure_mark:
            photo = add_disclosure(photo, self.settings.disclosure_text)
        return encode_jpeg(photo, quality=self.settings.jpeg_quality)

    async def _complete(
        self,
        envelope: Envelope[ImageQueued],
        claim: Claim,
        key: str,
        size: int,
        model: str | None,
        cost: float | None,
        duration_ms: int,
    ) -> None:
        event = envelope.data
        now = datetime.now(UTC)
        async with unit_of_work(self.runtime.sessionmaker) as session:
            jobs = JobRepository(session)
            job = await jobs.get(claim.job_id, lock=True)
            if job is None or job.status != JobStatus.PROCESSING:
                return
            job.status = JobStatus.COMPLETED
            job.finished_at = now
            job.updated_at = now
            job.lease_until = None
            job.staged_key = key
            job.model = model
            job.duration_ms = duration_ms
            add_event(
                session,
                ImageReady(
                    image_id=event.image_id,
                    user_id=event.user_id,
                    attempt=event.attempt,
                    staged_key=key,
                    content_type="image/jpeg",
                    size_bytes=size,
                    backend=self.backend.name,
                    model=model,
                    duration_ms=duration_ms,
                    cost_usd=cost,
                ),
                producer=PRODUCER,
                correlation_id=envelope.correlation_id,
            )
        self.runtime.relay.wake()

    async def _release(self, claim: Claim) -> None:
        """Hand the job back so a retry can take it at once."""
        try:
            async with unit_of_work(self.runtime.sessionmaker) as session:
                job = await JobRepository(session).get(claim.job_id, lock=True)
                if job is not None and job.status == JobStatus.PROCESSING:
                    job.status = JobStatus.QUEUED
                    job.lease_until = None
                    job.updated_at = datetime.now(UTC)
        except Exception:
            logger.exception("could not release job %s; its lease will expire", claim.job_id)

    async def fail(self, envelope: Envelope[ImageQueued], reason: str) -> None:
        """Mark the attempt failed and tell projects why, in words a person understands."""
        event = envelope.data
        now = datetime.now(UTC)
        async with unit_of_work(self.runtime.sessionmaker) as session:
            job: Job = await JobRepository(session).ensure(
                event.image_id, event.user_id, event.attempt, event.model_dump(mode="json")
            )
            if job.status in (JobStatus.COMPLETED, JobStatus.FAILED):
                return
            job.status = JobStatus.FAILED
            job.error = reason
            job.finished_at = now
            job.updated_at = now
            job.lease_until = None
            add_event(
                session,
                ImageFailed(
                    image_id=event.image_id,
                    user_id=event.user_id,
                    attempt=event.attempt,
                    reason=reason,
                    backend=self.backend.name,
                ),
                producer=PRODUCER,
                correlation_id=envelope.correlation_id,
            )
        self.runtime.relay.wake()

    async def give_up(self, envelope: Envelope[ImageQueued], reason: str) -> None:
        """After the last retry: fail the image with a reason."""
        await self.fail(envelope, f"Staging failed after several attempts ({reason[:200]}).")
