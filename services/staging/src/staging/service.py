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
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from minio.error import S3Error
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.enums import JobStatus
from contracts.events import (
    Envelope,
    ImageDeleted,
    ImageFailed,
    ImageProcessing,
    ImageQueued,
    ImageReady,
    ImageSettle,
)
from contracts.reasons import CATALOGUE, FailureReason
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
from staging.imaging import EncodedPhoto, UnusablePhoto, add_disclosure, decode, encode_jpeg
from staging.models import Job
from staging.reasons import detail_of, reason_for
from staging.repository import JobRepository, SettingRepository
from staging.settings import StagingSettings

logger = logging.getLogger(__name__)

PRODUCER = "staging"
BACKEND_SETTING = "staging.backend"


DELETED_REASON = FailureReason.DELETED.value
MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NotFound"})


def result_key(event: ImageQueued, run: int, extension: str) -> str:
    """Where one run of one attempt stores its staged photo (never shared with another run)."""
    return f"staged/{event.user_id}/{event.image_id}/{event.attempt}-{run}{extension}"


def image_prefix(user_id: uuid.UUID, image_id: uuid.UUID) -> str:
    """The prefix under which every staged photo of an image is stored."""
    return f"staged/{user_id}/{image_id}/"


class JobCancelled(Exception):
    """The image was deleted while its job ran: stop, store nothing, report nothing."""


@dataclass(frozen=True)
class Outcome:
    """A staged photo, stored."""

    key: str
    size: int
    model: str | None
    cost_usd: float | None
    prediction_id: str | None


@dataclass(frozen=True)
class Claim:
    """A job this worker now holds the lease on, as run number `run`, with what to run."""

    job_id: uuid.UUID
    run: int
    backend: str
    model: str | None
    prediction_id: str | None
    stored: Outcome | None = None


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
        """Run the job of this event (queued or a settle request) unless it already ran."""
        if self._draining:
            # Shutting down: leave the message unacked, so RabbitMQ hands it to another worker
            # when this one's channel closes.
            raise asyncio.CancelledError
        # The job runs in a task of its own: when the broker connection drops, aiormq cancels
        # the consumer's task, and a job cancelled there would lose a (possibly paid) backend
        # call. Shielded, it finishes and records its result; the redelivery then finds the job
        # completed, or running with a renewed lease, and does not call the backend again.
        work = asyncio.create_task(self._run(envelope))
        self._inflight.add(work)
        work.add_done_callback(self._forget_task)
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            if not work.done():
                logger.warning(
                    "delivery of %s was cancelled; its job finishes in the background",
                    envelope.event_id,
                )
            raise

    def _forget_task(self, task: asyncio.Task[Any]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Retrieved here so a job that outlived its delivery does not log "never retrieved";
            # the delivery (or its redelivery) is what retries it.
            logger.debug("job task ended with %r", task.exception())

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
        claim = await self._claim(envelope, settle=isinstance(envelope.data, ImageSettle))
        if claim is None:
            return
        started = time.perf_counter()
        work = asyncio.create_task(self._stage(envelope.data, claim))
        keeper = asyncio.create_task(self._keep_lease(claim, work))
        try:
            outcome = await work
        except PermanentError as exc:
            await self.fail(envelope, reason_for(exc), detail=detail_of(exc), run=claim.run)
            return
        except JobCancelled:
            await self._stop_deleted(claim)
            logger.info("job %s stopped: its image was deleted", claim.job_id)
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
            await asyncio.shield(self._release(claim, keep_prediction=keep, failure=exc))
            raise
        finally:
            keeper.cancel()
        duration_ms = round((time.perf_counter() - started) * 1000)
        try:
            await self._complete(envelope, claim, outcome, duration_ms)
        except BaseException:
            # The photo is stored and recorded but not reported: let the retry complete from it
            # without waiting for the lease (and without calling the backend again).
            await asyncio.shield(self._release(claim, keep_prediction=True))
            raise

    async def _claim(self, envelope: Envelope[ImageQueued], *, settle: bool) -> Claim | None:
        event = envelope.data
        observed: datetime | None = None
        claim: Claim | None = None
        while True:
            choice = await self.choice()
            now = datetime.now(UTC)
            async with unit_of_work(self.runtime.sessionmaker) as session:
                jobs = JobRepository(session)
                job = await jobs.ensure(
                    event.image_id,
                    event.user_id,
                    event.attempt,
                    ImageQueued.model_validate(event.model_dump()).model_dump(mode="json"),
                )
                if settle and not await self._answer_settle(session, envelope, job, now):
                    claim = None
                    break
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

    async def _answer_settle(
        self, session: AsyncSession, envelope: Envelope[ImageQueued], job: Job, now: datetime
    ) -> bool:
        """Answer a settle request from the job's truth; True when the job must run (again)."""
        event = envelope.data
        if await JobRepository(session).is_cancelled(event.image_id):
            # Projects no longer has the image: nothing to tell it.
            if job.status in (JobStatus.QUEUED, JobStatus.PROCESSING):
                _mark_deleted(job, now)
            return False
        if job.status == JobStatus.COMPLETED and job.staged_key:
            add_event(
                session,
                ImageReady(
                    image_id=job.image_id,
                    user_id=job.user_id,
                    attempt=job.attempt,
                    staged_key=job.staged_key,
                    content_type="image/jpeg",
                    size_bytes=job.size_bytes,
                    backend=job.backend or "unknown",
                    model=job.model,
                    duration_ms=job.duration_ms,
                    cost_usd=job.cost_usd,
                ),
                producer=PRODUCER,
                correlation_id=envelope.correlation_id,
            )
            return False
        if job.status in (JobStatus.COMPLETED, JobStatus.FAILED):
            add_event(
                session,
                ImageFailed(
                    image_id=job.image_id,
                    user_id=job.user_id,
                    attempt=job.attempt,
                    reason=_catalogued(job.error).value,
                    backend=job.backend,
                ),
                producer=PRODUCER,
                correlation_id=envelope.correlation_id,
            )
            return False
        if job.status == JobStatus.PROCESSING and job.lease_until and job.lease_until > now:
            logger.info("job %s is running; its holder will report", job.id)
            return False
        return True

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
            _mark_deleted(job, now)
            return None
        backend, model = job.backend, job.model
        if (job.prediction_id is None and job.result_key is None) or backend is None:
            # Only a job with a prediction or result to resume keeps the backend it started with.
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
        stored = None
        if job.result_key is not None:
            stored = Outcome(
                key=job.result_key,
                size=job.size_bytes or 0,
                model=job.model,
                cost_usd=job.cost_usd,
                prediction_id=job.prediction_id,
            )
        return Claim(
            job_id=job.id,
            run=job.runs,
            backend=backend,
            model=model,
            prediction_id=job.prediction_id,
            stored=stored,
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

    async def _check_deleted(self, event: ImageQueued) -> None:
        """Stop here if the image was deleted since the job started."""
        async with self.runtime.sessionmaker() as session:
            if await JobRepository(session).is_cancelled(event.image_id):
                raise JobCancelled(str(event.image_id))

    async def _stage(self, event: ImageQueued, claim: Claim) -> Outcome:
        if claim.stored is not None:
            info = await self.storage.stat(claim.stored.key)
            if info is not None:
                logger.info("job %s completes from its stored result", claim.job_id)
                return replace(claim.stored, size=info.size)
            logger.warning("the stored result of job %s is gone; staging again", claim.job_id)
        backend = self.backends.get(claim.backend)
        if backend is None:
            raise TransientBackendError(
                f"the {claim.backend} backend is not configured on this worker"
            )
        try:
            data = await self.storage.read(
                event.original_key, max_bytes=self.settings.max_input_bytes
            )
        except S3Error as exc:
            if exc.code not in MISSING_CODES:
                raise  # S3 away or failing: an infrastructure failure, retried for long
            await self._check_deleted(event)
            # A missing original will not come back by itself: the bounded ladder, then
            # image.failed, rather than days of infrastructure retries.
            raise TransientBackendError(
                f"the original photo {event.original_key} does not exist",
                reason=FailureReason.PHOTO_MISSING,
            ) from exc
        except ValueError as exc:
            # Storage refuses to read more than the bound: the photo itself is too large.
            raise UnusablePhoto(str(exc), reason=FailureReason.PHOTO_TOO_LARGE) from exc
        await self._check_deleted(event)
        photo = await asyncio.to_thread(
            decode,
            data,
            max_pixels=self.settings.max_input_pixels,
            max_side=self.settings.max_output_side,
        )
        seed = event.seed if event.seed is not None else int(event.image_id) % 4_294_967_296

        own_failures: list[BaseException] = []

        async def submitted(prediction_id: str) -> None:
            try:
                await self._record_prediction(claim, prediction_id)
            except BaseException as exc:
                own_failures.append(exc)
                raise

        try:
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
        except OSError as exc:
            if any(exc is own for own in own_failures):
                raise  # our own database: an infrastructure failure, retried for long
            # A backend's OSError (a timeout, a socket) is the backend's failure: it keeps the
            # bounded retry ladder and ends in image.failed, not days of infrastructure retries.
            raise TransientBackendError(
                f"the {claim.backend} backend failed: {type(exc).__name__}: {exc}"[:300]
            ) from exc
        await self._check_deleted(event)
        encoded = await asyncio.to_thread(self._finish, result.photo)
        await self._check_deleted(event)
        outcome = Outcome(
            key=result_key(event, claim.run, encoded.extension),
            size=len(encoded.data),
            model=result.model,
            cost_usd=result.cost_usd,
            prediction_id=result.prediction_id,
        )
        # Stored before anything else, then recorded by the holder only: a retry of this
        # attempt completes from it instead of paying for the backend call again.
        await self.storage.write(outcome.key, encoded.data, encoded.content_type)
        await self._record_result(claim, event, outcome)
        return outcome

    async def _record_result(self, claim: Claim, event: ImageQueued, outcome: Outcome) -> None:
        """Commit the stored result's key to the job, fenced by run; else remove the object."""
        try:
            async with unit_of_work(self.runtime.sessionmaker) as session:
                jobs = JobRepository(session)
                deleted = await jobs.is_cancelled(event.image_id)
                held = not deleted and await jobs.record_result(
                    claim.job_id,
                    claim.run,
                    key=outcome.key,
                    size=outcome.size,
                    model=outcome.model,
                    cost_usd=outcome.cost_usd,
                    prediction_id=outcome.prediction_id,
                )
        except BaseException:
            # Unrecorded, the object belongs to nobody; the orphan sweeper removes it if this
            # removal fails too.
            await asyncio.shield(self._discard(outcome.key))
            raise
        if deleted:
            await self._discard(outcome.key)
            raise JobCancelled(str(event.image_id))
        if not held:
            # Only the lease holder's result is recorded; the winner writes its own key.
            await self._discard(outcome.key)
            raise LeaseLost(f"job {claim.job_id} was taken over before its result was recorded")

    async def _discard(self, key: str) -> None:
        try:
            await self.storage.remove(key)
        except Exception as exc:
            logger.warning("could not remove %s (the orphan sweeper will): %s", key, exc)

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
        deleted = False
        async with unit_of_work(self.runtime.sessionmaker) as session:
            jobs = JobRepository(session)
            job = await jobs.get(claim.job_id, lock=True)
            if job is None or job.status != JobStatus.PROCESSING or job.runs != claim.run:
                # Another run holds the job; it completes from the same recorded result.
                return
            if await jobs.is_cancelled(event.image_id):
                # Checked with the job locked: a deletion committed before this point wins.
                _mark_deleted(job, now)
                deleted = True
            else:
                job.status = JobStatus.COMPLETED
                # An earlier run's failure no longer describes the attempt.
                job.error = None
                job.detail = None
                job.finished_at = now
                job.updated_at = now
                job.lease_until = None
                job.staged_key = outcome.key
                job.result_key = outcome.key
                job.size_bytes = outcome.size
                job.model = outcome.model
                job.cost_usd = outcome.cost_usd
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
        if deleted:
            await self._discard(outcome.key)
            return
        self.runtime.relay.wake()

    async def _stop_deleted(self, claim: Claim) -> None:
        """Finish a job whose image was deleted, without a word to projects."""
        async with unit_of_work(self.runtime.sessionmaker) as session:
            job = await JobRepository(session).get(claim.job_id, lock=True)
            if job is not None and job.status in (JobStatus.QUEUED, JobStatus.PROCESSING):
                _mark_deleted(job, datetime.now(UTC))

    async def _release(
        self, claim: Claim, *, keep_prediction: bool, failure: BaseException | None = None
    ) -> None:
        """Hand the job back so a retry (or another worker) can take it at once.

        The failure that ended the run is recorded (its reason and detail), so that if the
        retries run out, the owner reads what went wrong last rather than a generic sentence.
        """
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
                    if isinstance(failure, Exception):
                        job.error = reason_for(failure).value
                        job.detail = detail_of(failure)
        except Exception:
            logger.exception("could not release job %s; its lease will expire", claim.job_id)

    async def fail(
        self,
        envelope: Envelope[ImageQueued],
        reason: FailureReason | None,
        *,
        detail: str,
        run: int | None = None,
    ) -> None:
        """Mark the attempt failed and tell projects why, in a sentence from the catalogue.

        Without a reason, the one recorded with the attempt's last failed run is used. The
        detail goes to the log and the admin job view only.
        """
        event = envelope.data
        now = datetime.now(UTC)
        async with unit_of_work(self.runtime.sessionmaker) as session:
            jobs = JobRepository(session)
            job: Job = await jobs.ensure(
                event.image_id,
                event.user_id,
                event.attempt,
                ImageQueued.model_validate(event.model_dump()).model_dump(mode="json"),
            )
            if job.status in (JobStatus.COMPLETED, JobStatus.FAILED):
                return
            if run is not None and job.runs != run:
                return
            live = job.status == JobStatus.PROCESSING and job.lease_until is not None
            if run is None and live and job.lease_until is not None and job.lease_until > now:
                # Another delivery holds the job right now: its holder reports the outcome.
                return
            if await jobs.is_cancelled(event.image_id):
                _mark_deleted(job, now)
                return
            if reason is None:
                reason = _catalogued(job.error)
            logger.warning(
                "job %s (image %s, attempt %s, %s) failed: %s",
                job.id,
                event.image_id,
                event.attempt,
                job.backend,
                detail,
            )
            job.status = JobStatus.FAILED
            job.error = reason.value
            job.detail = detail
            job.finished_at = now
            job.updated_at = now
            job.lease_until = None
            add_event(
                session,
                ImageFailed(
                    image_id=event.image_id,
                    user_id=event.user_id,
                    attempt=event.attempt,
                    reason=reason.value,
                    backend=job.backend,
                ),
                producer=PRODUCER,
                correlation_id=envelope.correlation_id,
            )
        self.runtime.relay.wake()

    async def give_up(self, envelope: Envelope[ImageQueued], reason: str) -> None:
        """After the last retry: fail with the last run's reason (raises if the DB is down)."""
        await self.fail(envelope, None, detail=f"gave up: {reason}"[:2000])


def _catalogued(error: str | None) -> FailureReason:
    """The catalogue reason a job recorded; a generic one if it holds anything else."""
    return FailureReason(error) if error in CATALOGUE else FailureReason.INTERNAL


def _mark_deleted(job: Job, now: datetime) -> None:
    job.status = JobStatus.FAILED
    job.error = DELETED_REASON
    job.finished_at = now
    job.updated_at = now
    job.lease_until = None


class Cancellations:
    """Deleted images: their work stops and every staged photo of theirs is removed."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def forget_images(self, session: AsyncSession, envelope: Envelope[Any]) -> None:
        """Cancel pending work of deleted images and remove their stored photos."""
        event = envelope.data
        ids: list[uuid.UUID] = (
            [event.image_id] if isinstance(event, ImageDeleted) else list(event.image_ids)
        )
        jobs = JobRepository(session)
        await jobs.cancel(ids)
        # Failing the unfinished jobs fences out a worker mid-job: its next fenced write fails
        # and it removes whatever it stored.
        await jobs.stop(ids, DELETED_REASON, datetime.now(UTC))
        keys: set[str] = set(event.keys)
        prefixes = {image_prefix(event.user_id, i) for i in ids}
        for job in await jobs.for_images(ids):
            keys.update(k for k in (job.staged_key, job.result_key) if k)
            prefixes.add(image_prefix(job.user_id, job.image_id))
        for prefix in sorted(prefixes):
            # Every run and attempt, recorded or not (a crashed worker's object too).
            keys.update(obj.key for obj in await self.storage.list(prefix))
        # Removal is idempotent: if it fails, the transaction rolls back and the retry removes
        # whatever is left.
        await self.storage.remove(*sorted(keys))


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
    job.detail = None
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
