"""Running staging jobs: claim once, stage, store, report; never twice for one attempt.

A job is the pair (image, attempt). A worker claims it with a lease that it renews while it
works; `runs` counts claims and fences every later write, so a worker that lost its lease can
neither store a prediction id nor report a result. A remote backend's prediction id is committed
to the job before the worker waits on it, so a run after a crash or a retry resumes that
prediction instead of paying for another.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from contracts.enums import JobStatus
from contracts.events import Envelope, ImageFailed, ImageProcessing, ImageQueued, ImageReady
from servicekit.db import unit_of_work
from servicekit.errors import Conflict, NotFound
from servicekit.messaging import PermanentError
from servicekit.outbox import add_event
from servicekit.runtime import Runtime
from servicekit.storage import Storage
from staging.backends.base import (
    LeaseLost,
    StageRequest,
    StagingBackend,
    TransientBackendError,
)
from staging.backends.registry import (
    BackendChoice,
    InvalidChoice,
    default_choice,
    normalise_choice,
)
from staging.imaging import EncodedPhoto, add_disclosure, decode, encode_jpeg
from staging.models import Job
from staging.repository import JobRepository, SettingRepository
from staging.settings import StagingSettings

logger = logging.getLogger(__name__)

PRODUCER = "staging"
BACKEND_SETTING = "staging.backend"


def staged_key(event: ImageQueued, extension: str) -> str:
    """Where the staged photo of one attempt is stored."""
    return f"staged/{event.user_id}/{event.image_id}/{event.attempt}{extension}"


@dataclass(frozen=True)
class Claim:
    """A job this worker now holds the lease on, as run number `run`, with what to run."""

    job_id: uuid.UUID
    run: int
    backend: str
    model: str | None
    prediction_id: str | None


@dataclass(frozen=True)
class Outcome:
    """A staged photo, stored."""

    key: str
    size: int
    model: str | None
    cost_usd: float | None
    prediction_id: str | None


class JobRunner:
    """Stages images from `image.queued` events with the backend an admin chose."""

    def __init__(
        self,
        runtime: Runtime,
        storage: Storage,
        backends: StagingBackend | Mapping[str, StagingBackend],
        settings: StagingSettings,
    ) -> None:
        self.runtime = runtime
        self.storage = storage
        self.backends: dict[str, StagingBackend] = (
            dict(backends) if isinstance(backends, Mapping) else {backends.name: backends}
        )
        self.settings = settings
        self._choice: BackendChoice | None = None
        self._choice_read_at = 0.0
        self._inflight: set[asyncio.Task[Any]] = set()
        self._draining = False

    @property
    def lease(self) -> timedelta:
        """How long a claim lasts without renewal."""
        return timedelta(seconds=self.settings.job_lease_seconds)

    async def choice(self) -> BackendChoice:
        """The backend and model for new jobs: the admin's choice, re-read every few seconds."""
        now = time.monotonic()
        if self._choice is not None and now - self._choice_read_at < (
            self.settings.backend_cache_seconds
        ):
            return self._choice
        async with self.runtime.sessionmaker() as session:
            stored = await SettingRepository(session).get(BACKEND_SETTING)
        choice = default_choice(self.settings)
        if stored:
            try:
                # Honour the choice even if this replica lacks the backend: the job then fails
                # with a reason naming it, rather than silently using another backend.
                choice = normalise_choice(str(stored.get("backend")), stored.get("model"))
            except InvalidChoice as exc:
                logger.warning("ignoring the stored backend choice: %s", exc)
        self._choice, self._choice_read_at = choice, now
        return choice

    def forget_choice(self) -> None:
        """Re-read the choice for the next job (this replica just changed it)."""
        self._choice = None

    async def handle(self, envelope: Envelope[ImageQueued]) -> None:
        """Run the job of this event unless it already ran or another worker holds it."""
        if self._draining:
            # Shutting down: leave the message unacked, so RabbitMQ hands it to another worker
            # when this one's channel closes.
            raise asyncio.CancelledError
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            await self._run(envelope)
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def shutdown(self) -> None:
        """Let running jobs finish for a grace period, then hand the rest back at once."""
        self._draining = True
        busy = {t for t in self._inflight if not t.done()}
        if busy:
            logger.info(
                "waiting up to %.1f s for %d job(s)",
                self.settings.shutdown_grace_seconds,
                len(busy),
            )
            await asyncio.wait(busy, timeout=self.settings.shutdown_grace_seconds)
        rest = {t for t in self._inflight if not t.done()}
        for task in rest:
            task.cancel()
        if rest:
            logger.info("handing back %d unfinished job(s)", len(rest))
            await asyncio.wait(rest, timeout=10)

    async def _run(self, envelope: Envelope[ImageQueued]) -> None:
        claim = await self._claim(envelope)
        if claim is None:
            return
        started = time.perf_counter()
        work = asyncio.create_task(self._stage(envelope.data, claim))
        keeper = asyncio.create_task(self._keep_lease(claim, work))
        try:
            outcome = await work
        except PermanentError as exc:
            await self.fail(envelope, str(exc), run=claim.run)
            return
        except LeaseLost:
            logger.warning("job %s was taken over by another worker", claim.job_id)
            return
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if keeper.done() and current is not None and not current.cancelling():
                logger.warning("job %s lost its lease; stopped", claim.job_id)
                return
            await asyncio.shield(self._release(claim, keep_prediction=True))
            raise
        except BaseException as exc:
            keep = not isinstance(exc, TransientBackendError) or exc.resumable
            await asyncio.shield(self._release(claim, keep_prediction=keep))
            raise
        finally:
            keeper.cancel()
        duration_ms = round((time.perf_counter() - started) * 1000)
        try:
            await self._complete(envelope, claim, outcome, duration_ms)
        except BaseException:
            # The photo is stored but not reported: let the retry report it without waiting
            # for the lease (a remote prediction is resumed, not paid again).
            await asyncio.shield(self._release(claim, keep_prediction=True))
            raise

    async def _claim(self, envelope: Envelope[ImageQueued]) -> Claim | None:
        event = envelope.data
        observed: datetime | None = None
        while True:
            choice = await self.choice()
            now = datetime.now(UTC)
            async with unit_of_work(self.runtime.sessionmaker) as session:
                jobs = JobRepository(session)
                job = await jobs.ensure(
                    event.image_id, event.user_id, event.attempt, event.model_dump(mode="json")
                )
                if job.status in (JobStatus.COMPLETED, JobStatus.FAILED):
                    logger.info("job %s already %s; ignoring duplicate", job.id, job.status)
                    return None
                held = job.status == JobStatus.PROCESSING and job.lease_until is not None
                if held and job.lease_until is not None and job.lease_until > now:
                    if observed is not None and job.lease_until != observed:
                        # The holder renewed its lease, so it is alive; if it dies, its own
                        # unacked delivery comes back and finishes the job.
                        logger.info("job %s is running elsewhere; ignoring duplicate", job.id)
                        return None
                    observed = job.lease_until
                    wait = (job.lease_until - now).total_seconds()
                else:
                    claim = await self._take(session, envelope, job, choice, now)
                    if claim is None:
                        return None
                    break
            # A redelivery after a crash finds the dead worker's lease: wait for it to lapse
            # (or to be renewed, which proves the holder alive) instead of dropping the job.
            await asyncio.sleep(min(wait + 0.05, 1.0))
        self.runtime.relay.wake()
        return claim

    async def _take(
        self,
        session: AsyncSession,
        envelope: Envelope[ImageQueued],
        job: Job,
        choice: BackendChoice,
        now: datetime,
    ) -> Claim | None:
        event = envelope.data
        if await JobRepository(session).is_cancelled(event.image_id):
            job.status = JobStatus.FAILED
            job.error = "The image was deleted."
            job.finished_at = now
            job.lease_until = None
            return None
        backend, model = job.backend, job.model
        if job.prediction_id is None or backend is None:
            # Only a job with a prediction to resume keeps the backend it started with.
            backend, model = choice.backend, choice.model
            job.backend, job.model = backend, model
        first_run = job.started_at is None
        job.status = JobStatus.PROCESSING
        job.started_at = job.started_at or now
        job.lease_until = now + self.lease
        job.runs += 1
        job.updated_at = now
        if first_run:
            add_event(
                session,
                ImageProcessing(
                    image_id=event.image_id,
                    user_id=event.user_id,
                    attempt=event.attempt,
                    backend=backend,
                ),
                producer=PRODUCER,
                correlation_id=envelope.correlation_id,
            )
        return Claim(
            job_id=job.id,
            run=job.runs,
            backend=backend,
            model=model,
            prediction_id=job.prediction_id,
        )

    async def _keep_lease(self, claim: Claim, work: asyncio.Task[Any]) -> None:
        """Renew the lease while the job runs; stop the work if another worker took it."""
        interval = self.settings.job_lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                async with unit_of_work(self.runtime.sessionmaker) as session:
                    held = await JobRepository(session).renew_lease(
                        claim.job_id, claim.run, datetime.now(UTC) + self.lease
                    )
            except Exception as exc:
                # Keep working through a database blip; the lease has slack for two misses.
                logger.warning("could not renew the lease of job %s: %s", claim.job_id, exc)
                continue
            if not held:
                work.cancel()
                return

    async def _stage(self, event: ImageQueued, claim: Claim) -> Outcome:
        backend = self.backends.get(claim.backend)
        if backend is None:
            raise TransientBackendError(
                f"the {claim.backend} backend is not configured on this worker"
            )
        data = await self.storage.read(event.original_key, max_bytes=self.settings.max_input_bytes)
        photo = await asyncio.to_thread(
            decode,
            data,
            max_pixels=self.settings.max_input_pixels,
            max_side=self.settings.max_output_side,
        )
        seed = event.seed if event.seed is not None else int(event.image_id) % 4_294_967_296

        async def submitted(prediction_id: str) -> None:
            await self._record_prediction(claim, prediction_id)

        result = await backend.stage(
            StageRequest(
                photo=photo,
                room_type=event.room_type,
                style=event.style,
                seed=seed,
                model=claim.model,
            ),
            resume_id=claim.prediction_id,
            on_submitted=submitted,
        )
        encoded = await asyncio.to_thread(self._finish, result.photo)
        key = staged_key(event, encoded.extension)
        await self.storage.write(key, encoded.data, encoded.content_type)
        return Outcome(
            key=key,
            size=len(encoded.data),
            model=result.model,
            cost_usd=result.cost_usd,
            prediction_id=result.prediction_id,
        )

    async def _record_prediction(self, claim: Claim, prediction_id: str) -> None:
        """Commit the paid call's id to the job before anyone waits on it."""
        async with unit_of_work(self.runtime.sessionmaker) as session:
            held = await JobRepository(session).record_prediction(
                claim.job_id, claim.run, prediction_id
            )
        if not held:
            raise LeaseLost(f"job {claim.job_id} was taken over before its prediction was stored")

    def _finish(self, photo: Any) -> EncodedPhoto:
        if self.settings.disclosure_mark:
            photo = add_disclosure(photo, self.settings.disclosure_text)
        return encode_jpeg(photo, quality=self.settings.jpeg_quality)

    async def _complete(
        self, envelope: Envelope[ImageQueued], claim: Claim, outcome: Outcome, duration_ms: int
    ) -> None:
        event = envelope.data
        now = datetime.now(UTC)
        async with unit_of_work(self.runtime.sessionmaker) as session:
            jobs = JobRepository(session)
            job = await jobs.get(claim.job_id, lock=True)
            if job is None or job.status != JobStatus.PROCESSING or job.runs != claim.run:
                return
            job.status = JobStatus.COMPLETED
            job.finished_at = now
            job.updated_at = now
            job.lease_until = None
            job.staged_key = outcome.key
            job.model = outcome.model
            job.prediction_id = outcome.prediction_id or job.prediction_id
            job.duration_ms = duration_ms
            add_event(
                session,
                ImageReady(
                    image_id=event.image_id,
                    user_id=event.user_id,
                    attempt=event.attempt,
                    staged_key=outcome.key,
                    content_type="image/jpeg",
                    size_bytes=outcome.size,
                    backend=claim.backend,
                    model=outcome.model,
                    duration_ms=duration_ms,
                    cost_usd=outcome.cost_usd,
                ),
                producer=PRODUCER,
                correlation_id=envelope.correlation_id,
            )
        self.runtime.relay.wake()

    async def _release(self, claim: Claim, *, keep_prediction: bool) -> None:
        """Hand the job back so a retry (or another worker) can take it at once."""
        try:
            async with unit_of_work(self.runtime.sessionmaker) as session:
                job = await JobRepository(session).get(claim.job_id, lock=True)
                if (
                    job is not None
                    and job.status == JobStatus.PROCESSING
                    and (job.runs == claim.run)
                ):
                    job.status = JobStatus.QUEUED
                    job.lease_until = None
                    job.updated_at = datetime.now(UTC)
                    if not keep_prediction:
                        job.prediction_id = None
        except Exception:
            logger.exception("could not release job %s; its lease will expire", claim.job_id)

    async def fail(
        self, envelope: Envelope[ImageQueued], reason: str, *, run: int | None = None
    ) -> None:
        """Mark the attempt failed and tell projects why, in words a person understands."""
        event = envelope.data
        now = datetime.now(UTC)
        async with unit_of_work(self.runtime.sessionmaker) as session:
            job: Job = await JobRepository(session).ensure(
                event.image_id, event.user_id, event.attempt, event.model_dump(mode="json")
            )
            if job.status in (JobStatus.COMPLETED, JobStatus.FAILED):
                return
            if run is not None and job.runs != run:
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
                    backend=job.backend,
                ),
                producer=PRODUCER,
                correlation_id=envelope.correlation_id,
            )
        self.runtime.relay.wake()

    async def give_up(self, envelope: Envelope[ImageQueued], reason: str) -> None:
        """After the last retry: fail the image with a reason."""
        await self.fail(envelope, f"Staging failed after several attempts ({reason[:200]}).")


async def retry_failed_job(
    session: AsyncSession, job_id: uuid.UUID, *, correlation_id: str | None
) -> Job:
    """Queue a failed job again, same attempt, without a new charge to the user."""
    jobs = JobRepository(session)
    job = await jobs.get(job_id, lock=True)
    if job is None:
        raise NotFound("No such job.")
    if job.status != JobStatus.FAILED:
        raise Conflict(f"Only failed jobs can be retried; this one is {job.status}.")
    if await jobs.is_cancelled(job.image_id):
        raise Conflict("The image was deleted; its job cannot be retried.")
    now = datetime.now(UTC)
    job.status = JobStatus.QUEUED
    job.error = None
    job.started_at = None
    job.finished_at = None
    job.lease_until = None
    job.staged_key = None
    job.duration_ms = None
    # The failure was final, so its prediction (if any) has nothing more to give.
    job.prediction_id = None
    job.updated_at = now
    add_event(
        session,
        ImageQueued.model_validate(job.payload_json),
        producer=PRODUCER,
        correlation_id=correlation_id,
    )
    return job
