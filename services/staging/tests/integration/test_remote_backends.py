"""Remote backends against local servers that speak their protocols, on real PostgreSQL and S3.

Every failure class ends as designed: transient ones raise (so the consumer retries with growing
delay) and keep whatever prediction can be resumed; permanent ones fail the job at once with a
reason a person understands. Above all, one attempt pays for one prediction, even when the
message comes twice or the worker dies while the prediction runs.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import FakeOpenAI, FakeReplicate
from PIL import Image
from sqlalchemy import select

from contracts.enums import Role, RoomType, Style
from contracts.events import Envelope, ImageQueued
from contracts.reasons import FailureReason
from devstack.services import ServiceProcess
from servicekit.messaging import EVENTS_EXCHANGE, create_broker
from servicekit.outbox import OutboxMessage
from servicekit.runtime import Runtime
from servicekit.storage import Storage
from servicekit.testing import (
    TEST_INTERNAL_SECRET,
    InfraUrls,
    identity_headers,
    running,
    wait_for,
)
from staging.app import create_app
from staging.backends.base import TransientBackendError
from staging.backends.registry import build_backends
from staging.models import Job
from staging.repository import SettingRepository
from staging.service import BACKEND_SETTING, JobRunner
from staging.settings import StagingSettings

pytestmark = pytest.mark.integration

BUCKET = "realstaging-test"


def _settings(
    infra: InfraUrls, database_url: str, *, backend: str, **overrides: Any
) -> StagingSettings:
    values: dict[str, Any] = {
        "environment": "test",
        "database_url": database_url,
        "amqp_url": infra.amqp_url,
        "internal_secret": TEST_INTERNAL_SECRET,
        "s3_endpoint": infra.s3_endpoint,
        "s3_access_key": infra.s3_access_key,
        "s3_secret_key": infra.s3_secret_key,
        "s3_bucket": BUCKET,
        "backend": backend,
        "replicate_poll_initial_seconds": 0.05,
        "replicate_poll_max_seconds": 0.2,
        "replicate_timeout_seconds": 20,
        "remote_max_retry_after_seconds": 5,
        # The fakes serve their output files over http on loopback.
        "remote_output_hosts": ["127.0.0.1"],
        "remote_output_require_https": False,
    }
    values.update(overrides)
    return StagingSettings(**values)


@pytest.fixture
async def database_url(database_factory: Callable[..., Any]) -> str:
    """A migrated staging database for one test."""
    url: str = await database_factory("staging")
    return url


@pytest.fixture
async def runtime(
    infra: InfraUrls, database_url: str, replicate_api: FakeReplicate
) -> AsyncIterator[Runtime]:
    """Database connections of a worker (jobs are run directly, no broker)."""
    rt = Runtime(_settings(infra, database_url, backend="local"))
    yield rt
    await rt.engine.dispose()


@pytest.fixture
async def storage(infra: InfraUrls, database_url: str) -> Storage:
    """The test bucket."""
    store = Storage(_settings(infra, database_url, backend="local"))
    await store.ensure_bucket()
    return store


def _jpeg(size: tuple[int, int] = (320, 240)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (210, 200, 190)).save(buf, "JPEG")
    return buf.getvalue()


async def _queued(storage: Storage, *, seed: int | None = 11) -> Envelope[ImageQueued]:
    user_id = uuid.uuid4()
    key = f"uploads/{user_id}/{uuid.uuid4().hex}.jpg"
    await storage.write(key, _jpeg(), "image/jpeg")
    event = ImageQueued(
        image_id=uuid.uuid4(),
        user_id=user_id,
        project_id=uuid.uuid4(),
        original_key=key,
        room_type=RoomType.LIVING_ROOM,
        style=Style.SCANDINAVIAN,
        seed=seed,
    )
    return Envelope.wrap(event, producer="projects")


async def _job(runtime: Runtime) -> Job:
    async with runtime.sessionmaker() as session:
        return (await session.scalars(select(Job))).one()


async def _outbox(runtime: Runtime, key: str) -> list[dict[str, Any]]:
    async with runtime.sessionmaker() as session:
        rows = await session.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.routing_key == key)
            .order_by(OutboxMessage.created_at)
        )
        return [row.payload for row in rows]


@pytest.fixture
def make_runner(
    infra: InfraUrls,
    database_url: str,
    runtime: Runtime,
    storage: Storage,
    replicate_api: FakeReplicate,
    openai_api: FakeOpenAI,
) -> Callable[..., JobRunner]:
    """A job runner whose remote backends talk to the fakes."""

    def make(backend: str = "replicate", **overrides: Any) -> JobRunner:
        settings = _settings(
            infra,
            database_url,
            backend=backend,
            replicate_api_base=replicate_api.base_url,
            replicate_api_token=replicate_api.token,
            openai_api_base=openai_api.base_url,
            openai_api_key=openai_api.api_key,
            **overrides,
        )
        return JobRunner(runtime, storage, build_backends(settings), settings)

    return make


class TestReplicateBackend:
    """Replicate's predictions API: one paid call per attempt, failures classified."""

    async def test_a_prediction_that_succeeds_is_stored_with_its_cost(
        self,
        make_runner: Callable[..., JobRunner],
        runtime: Runtime,
        storage: Storage,
        replicate_api: FakeReplicate,
    ) -> None:
        runner = make_runner()
        envelope = await _queued(storage)
        await runner.handle(envelope)
        job = await _job(runtime)
        assert (job.status, job.backend, job.model) == (
            "completed",
            "replicate",
            "black-forest-labs/flux-kontext-max",
        )
        assert job.prediction_id in replicate_api.predictions
        assert replicate_api.create_calls == 1
        assert replicate_api.file_authorizations == [None]
        sent = replicate_api.predictions[job.prediction_id].input
        assert sent["input_image"].startswith("data:image/jpeg;base64,")
        assert (sent["aspect_ratio"], sent["output_format"], sent["seed"]) == (
            "match_input_image",
            "png",
            11,
        )
        assert (sent["safety_tolerance"], sent["prompt_upsampling"]) == (2, False)
        assert "Scandinavian" in sent["prompt"]
        assert "doorway" in sent["prompt"]
        [ready] = await _outbox(runtime, "image.ready")
        assert ready["data"]["cost_usd"] == 0.08
        assert ready["data"]["backend"] == "replicate"
        staged = Image.open(io.BytesIO(await storage.read(job.staged_key or "")))
        assert staged.format == "JPEG"

    async def test_the_admins_model_choice_is_used_for_the_next_job(
        self,
        make_runner: Callable[..., JobRunner],
        runtime: Runtime,
        storage: Storage,
        replicate_api: FakeReplicate,
    ) -> None:
        runner = make_runner(backend="local")
        async with runtime.sessionmaker() as session, session.begin():
            await SettingRepository(session).put(
                BACKEND_SETTING, {"backend": "replicate", "model": "qwen/qwen-image-edit"}, None
            )
        await runner.handle(await _queued(storage))
        job = await _job(runtime)
        assert (job.status, job.backend, job.model) == (
            "completed",
            "replicate",
            "qwen/qwen-image-edit",
        )
        sent = replicate_api.predictions[job.prediction_id or ""].input
        assert sent["image"].startswith("data:image/jpeg;base64,")
        assert (sent["go_fast"], sent["output_format"]) == (True, "webp")

    async def test_the_same_event_twice_gives_one_job_run_and_one_create_call(
        self,
        make_runner: Callable[..., JobRunner],
        runtime: Runtime,
        storage: Storage,
        replicate_api: FakeReplicate,
    ) -> None:
        replicate_api.polls_needed = 4
        runner = make_runner()
        envelope = await _queued(storage)
        await asyncio.gather(runner.handle(envelope), runner.handle(envelope))
        await runner.handle(envelope)
        job = await _job(runtime)
        assert (job.status, job.runs) == ("completed", 1)
        assert replicate_api.create_calls == 1
        assert len(await _outbox(runtime, "image.ready")) == 1

    async def test_a_safety_refusal_fails_the_job_at_once_with_a_reason(
        self,
        make_runner: Callable[..., JobRunner],
        runtime: Runtime,
        storage: Storage,
        replicate_api: FakeReplicate,
    ) -> None:
        replicate_api.outcome = "safety"
        await make_runner().handle(await _queued(storage))
        job = await _job(runtime)
        assert job.status == "failed"
        assert job.error == FailureReason.MODEL_REFUSED_SAFETY
        assert "NSFW" in (job.detail or "")
        [failed] = await _outbox(runtime, "image.failed")
        assert failed["data"]["reason"] == job.error
        assert replicate_api.create_calls == 1

    async def test_a_rejected_input_is_permanent(
        self,
        make_runner: Callable[..., JobRunner],
        runtime: Runtime,
        storage: Storage,
        replicate_api: FakeReplicate,
    ) -> None:
        replicate_api.create_validation_error = True
        await make_runner().handle(await _queued(storage))
        job = await _job(runtime)
        assert job.status == "failed"
        assert job.error == FailureReason.MODEL_REFUSED
        assert "Does not match format" in (job.detail or "")

    async def test_rate_limiting_waits_as_long_as_retry_after_asks(
        self,
        make_runner: Callable[..., JobRunner],
        runtime: Runtime,
        storage: Storage,
        replicate_api: FakeReplicate,
    ) -> None:
        replicate_api.create_rate_limits = 1
        replicate_api.retry_after = "1"
        await make_runner().handle(await _queued(storage))
        job = await _job(runtime)
        assert job.status == "completed"
        [prediction] = replicate_api.predictions.values()
        assert prediction.created_at - replicate_api.rate_limited_at[0] >= 0.9
        assert replicate_api.create_calls == 1

    async def test_a_server_error_raises_for_a_retry_that_pays_once(
        self,
        make_runner: Callable[..., JobRunner],
        runtime: Runtime,
        storage: Storage,
        replicate_api: FakeReplicate,
    ) -> None:
        replicate_api.create_server_errors = 1
        runner = make_runner()
        envelope = await _queued(storage)
        with pytest.raises(TransientBackendError, match="HTTP 502"):
            await runner.handle(envelope)
        job = await _job(runtime)
        assert (job.status, job.lease_until, job.prediction_id) == ("queued", None, None)
        await runner.handle(envelope)
        assert (await _job(runtime)).status == "completed"
        assert replicate_api.create_calls == 1

    async def test_a_malformed_reply_is_transient_and_the_retry_resumes_the_prediction(
        self,
        make_runner: Callable[..., JobRunner],
        runtime: Runtime,
        storage: Storage,
        replicate_api: FakeReplicate,
    ) -> None:
        replicate_api.malformed_polls = 1
        runner = make_runner()
        envelope = await _queued(storage)
        with pytest.raises(TransientBackendError, match="not JSON"):
            await runner.handle(envelope)
        job = await _job(runtime)
        assert job.status == "queued"
        first_prediction = job.prediction_id
        assert first_prediction is not None
        await runner.handle(envelope)
        job = await _job(runtime)
        assert (job.status, job.prediction_id, job.runs) == ("completed", first_prediction, 2)
        assert replicate_api.create_calls == 1

    async def test_a_missing_output_is_transient_and_keeps_the_prediction(
        self,
        make_runner: Callable[..., JobRunner],
        runtime: Runtime,
        storage: Storage,
        replicate_api: FakeReplicate,
    ) -> None:
        replicate_api.outcome = "output_404"
        runner = make_runner()
        envelope = await _queued(storage)
        for _ in range(2):
            with pytest.raises(TransientBackendError, match="HTTP 404"):
                await runner.handle(envelope)
        job = await _job(runtime)
        assert job.status == "queued"
        assert job.prediction_id is not None
        assert replicate_api.create_calls == 1

    async def test_a_failed_prediction_is_retried_with_a_new_one(
        self,
        make_runner: Callable[..., JobRunner],
        runtime: Runtime,
        storage: Storage,
        replicate_api: FakeReplicate,
    ) -> None:
        replicate_api.outcome = "fail"
        runner = make_runner()
        envelope = await _queued(storage)
        with pytest.raises(TransientBackendError, match="CUDA out of memory"):
            await runner.handle(envelope)
        job = await _job(runtime)
        assert (job.status, job.prediction_id) == ("queued", None)
        replicate_api.outcome = "succeed"
        await runner.handle(envelope)
        assert (await _job(runtime)).status == "completed"
        assert replicate_api.create_calls == 2

    async def test_a_prediction_that_never_finishes_is_cancelled_at_the_timeout(
        self,
        make_runner: Callable[..., JobRunner],
        runtime: Runtime,
        storage: Storage,
        replicate_api: FakeReplicate,
    ) -> None:
        replicate_api.outcome = "never"
        runner = make_runner(replicate_timeout_seconds=1)
        with pytest.raises(TransientBackendError, match="was cancelled"):
            await runner.handle(await _queued(storage))
        [prediction] = replicate_api.predictions.values()
        assert replicate_api.cancels == [prediction.id]
        assert prediction.status == "canceled"
        job = await _job(runtime)
        assert (job.status, job.prediction_id) == ("queued", None)


class TestOpenAIBackend:
    """OpenAI's image edits: one synchronous call, the same failure classes."""

    async def test_an_edit_is_stored_with_its_cost(
        self,
        make_runner: Callable[..., JobRunner],
        runtime: Runtime,
        storage: Storage,
        openai_api: FakeOpenAI,
    ) -> None:
        await make_runner("openai").handle(await _queued(storage))
        job = await _job(runtime)
        assert (job.status, job.backend, job.model) == ("completed", "openai", "gpt-image-1")
        [sent] = openai_api.requests
        assert sent["model"] == "gpt-image-1"
        assert (sent["size"], sent["quality"], sent["n"]) == ("1536x1024", "medium", "1")
        assert sent["image_type"] == "image/png"
        assert "living room" in sent["prompt"]
        [ready] = await _outbox(runtime, "image.ready")
        assert ready["data"]["cost_usd"] == 0.063
        assert openai_api.edit_calls == 1

    async def test_a_moderation_block_fails_the_job_at_once(
        self,
        make_runner: Callable[..., JobRunner],
        runtime: Runtime,
        storage: Storage,
        openai_api: FakeOpenAI,
    ) -> None:
        openai_api.outcome = "moderation"
        await make_runner("openai").handle(await _queued(storage))
        job = await _job(runtime)
        assert job.status == "failed"
        assert job.error == FailureReason.MODEL_REFUSED_SAFETY
        assert "safety system" in (job.detail or "")

    async def test_rate_limiting_is_waited_out(
        self,
        make_runner: Callable[..., JobRunner],
        runtime: Runtime,
        storage: Storage,
        openai_api: FakeOpenAI,
    ) -> None:
        openai_api.rate_limits = 1
        await make_runner("openai").handle(await _queued(storage))
        assert (await _job(runtime)).status == "completed"
        assert len(openai_api.requests) == 2

    @pytest.mark.parametrize(
        ("outcome", "message"), [("server_error", "HTTP 500"), ("malformed", "not JSON")]
    )
    async def test_server_errors_and_malformed_replies_are_transient(
        self,
        make_runner: Callable[..., JobRunner],
        runtime: Runtime,
        storage: Storage,
        openai_api: FakeOpenAI,
        outcome: Any,
        message: str,
    ) -> None:
        openai_api.outcome = outcome
        with pytest.raises(TransientBackendError, match=message):
            await make_runner("openai").handle(await _queued(storage))
        job = await _job(runtime)
        assert (job.status, job.lease_until) == ("queued", None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def staging_env(infra: InfraUrls, database_url: str, port: int, **extra: str) -> dict[str, str]:
    """The environment of a staging process on the test's database, vhost and bucket."""
    env = dict(os.environ)
    env.update(
        ENVIRONMENT="test",
        AMQP_URL=infra.amqp_url,
        INTERNAL_SECRET=TEST_INTERNAL_SECRET,
        S3_ENDPOINT=infra.s3_endpoint,
        S3_ACCESS_KEY=infra.s3_access_key,
        S3_SECRET_KEY=infra.s3_secret_key,
        S3_BUCKET=BUCKET,
        STAGING_DATABASE_URL=database_url,
        STAGING_HOST="127.0.0.1",
        STAGING_PORT=str(port),
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


async def publish(infra: InfraUrls, envelopes: list[Envelope[ImageQueued]]) -> None:
    """Publish events to the exchange as projects' outbox relay would."""
    broker = create_broker(infra.amqp_url, app_id="test")
    await broker.connect()
    try:
        for envelope in envelopes:
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


async def _job_by_image(runtime: Runtime, image_id: uuid.UUID) -> Job | None:
    async with runtime.sessionmaker() as session:
        return (await session.scalars(select(Job).where(Job.image_id == image_id))).one_or_none()


class TestWorkerProcess:
    """A real staging process: killed or stopped mid-prediction, it resumes and pays once."""

    @pytest.fixture
    def process(
        self, infra: InfraUrls, database_url: str, replicate_api: FakeReplicate, tmp_path: Path
    ) -> ServiceProcess:
        """A staging process on the fake Replicate, with a short lease (not started)."""
        port = _free_port()
        env = staging_env(
            infra,
            database_url,
            port,
            STAGING_BACKEND="replicate",
            STAGING_REPLICATE_API_TOKEN=replicate_api.token,
            STAGING_REPLICATE_API_BASE=replicate_api.base_url,
            STAGING_REMOTE_OUTPUT_HOSTS="127.0.0.1",
            STAGING_REMOTE_OUTPUT_REQUIRE_HTTPS="false",
            STAGING_REPLICATE_POLL_INITIAL_SECONDS="0.1",
            STAGING_REPLICATE_POLL_MAX_SECONDS="0.3",
            STAGING_JOB_LEASE_SECONDS="4",
            STAGING_SHUTDOWN_GRACE_SECONDS="0.5",
        )
        return ServiceProcess("staging", env, port=port, log_path=tmp_path / "staging.log")

    async def _start(self, process: ServiceProcess) -> None:
        process.start()
        await asyncio.to_thread(process.wait_ready, 60)

    async def test_a_worker_killed_mid_prediction_resumes_it_after_restart(
        self,
        infra: InfraUrls,
        runtime: Runtime,
        storage: Storage,
        replicate_api: FakeReplicate,
        process: ServiceProcess,
    ) -> None:
        replicate_api.outcome = "hold"
        envelope = await _queued(storage)
        await self._start(process)
        try:
            await publish(infra, [envelope])
            await wait_for(replicate_api.in_progress, within=30)
            process.kill()
            job = await _job_by_image(runtime, envelope.data.image_id)
            assert job is not None
            assert job.status == "processing"
            first_prediction = job.prediction_id
            assert first_prediction in replicate_api.predictions

            await self._start(process)
            replicate_api.released.set()

            async def completed() -> Job | None:
                job = await _job_by_image(runtime, envelope.data.image_id)
                return job if job is not None and job.status == "completed" else None

            job = await wait_for(completed, within=60, interval=0.2)
        finally:
            process.stop()
        assert replicate_api.create_calls == 1
        assert (job.prediction_id, job.runs) == (first_prediction, 2)
        assert len(await _outbox(runtime, "image.ready")) == 1

    async def test_a_worker_stopped_mid_prediction_hands_the_job_back(
        self,
        infra: InfraUrls,
        runtime: Runtime,
        storage: Storage,
        replicate_api: FakeReplicate,
        process: ServiceProcess,
    ) -> None:
        replicate_api.outcome = "hold"
        envelope = await _queued(storage)
        await self._start(process)
        try:
            await publish(infra, [envelope])
            await wait_for(replicate_api.in_progress, within=30)
            started = time.monotonic()
            await asyncio.to_thread(process.stop, 20)
            assert time.monotonic() - started < 15
            job = await _job_by_image(runtime, envelope.data.image_id)
            assert job is not None
            # Released, not left to its lease: another worker may take it over at once.
            assert (job.status, job.lease_until) == ("queued", None)
            assert job.prediction_id in replicate_api.predictions

            replicate_api.released.set()
            await self._start(process)

            async def completed() -> Job | None:
                job = await _job_by_image(runtime, envelope.data.image_id)
                return job if job is not None and job.status == "completed" else None

            await wait_for(completed, within=30, interval=0.2)
        finally:
            process.stop()
        assert replicate_api.create_calls == 1


class TestAdminApi:
    """The admin chooses the backend for every replica, and re-runs failed jobs."""

    async def test_choosing_a_backend_is_validated_and_shared(
        self,
        infra: InfraUrls,
        database_url: str,
        runtime: Runtime,
        storage: Storage,
        replicate_api: FakeReplicate,
        make_runner: Callable[..., JobRunner],
    ) -> None:

        settings = _settings(
            infra,
            database_url,
            backend="local",
            replicate_api_base=replicate_api.base_url,
            replicate_api_token=replicate_api.token,
        )
        app = create_app(settings)
        headers = identity_headers("staging", role=Role.ADMIN)
        async with (
            running(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://staging"
            ) as client,
        ):
            url = "/v1/admin/staging/backend"
            assert (await client.get(url, headers=headers)).json()["backend"] == "local"
            for body in (
                {"backend": "midjourney"},
                {"backend": "replicate", "model": "stability-ai/sdxl"},
                {"backend": "openai"},
            ):
                response = await client.put(url, json=body, headers=headers)
                assert response.status_code == 422, body
                assert response.json()["error"] == "invalid_backend"
            response = await client.put(url, json={"backend": "replicate"}, headers=headers)
            assert response.status_code == 200
            assert response.json()["model"] == "qwen/qwen-image-edit"
            user = identity_headers("staging", role=Role.USER)
            assert (
                await client.put(url, json={"backend": "local"}, headers=user)
            ).status_code == 403
        # Another replica (a runner of its own) reads the choice from the database.
        other = make_runner(backend="local")
        assert (await other.choice()).backend == "replicate"

    async def test_a_failed_job_is_run_again_without_a_new_attempt(
        self,
        infra: InfraUrls,
        database_url: str,
        runtime: Runtime,
        storage: Storage,
        replicate_api: FakeReplicate,
        make_runner: Callable[..., JobRunner],
    ) -> None:

        replicate_api.outcome = "safety"
        runner = make_runner()
        envelope = await _queued(storage)
        await runner.handle(envelope)
        failed = await _job(runtime)
        assert failed.status == "failed"

        settings = _settings(infra, database_url, backend="local")
        app = create_app(settings)
        headers = identity_headers("staging", role=Role.ADMIN)
        async with (
            running(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://staging"
            ) as client,
        ):
            response = await client.post(
                f"/v1/admin/staging/jobs/{failed.id}/retry", headers=headers
            )
            assert response.status_code == 202
            assert response.json()["status"] == "queued"
            again = await client.post(f"/v1/admin/staging/jobs/{failed.id}/retry", headers=headers)
            assert again.status_code == 409
        [requeued] = await _outbox(runtime, "image.queued")
        assert requeued["data"]["attempt"] == envelope.data.attempt
        assert requeued["data"]["image_id"] == str(envelope.data.image_id)

        replicate_api.outcome = "succeed"
        await runner.handle(Envelope[ImageQueued].model_validate(requeued))
        job = await _job(runtime)
        assert (job.id, job.status, job.error) == (failed.id, "completed", None)
        assert len(await _outbox(runtime, "image.processing")) == 2
