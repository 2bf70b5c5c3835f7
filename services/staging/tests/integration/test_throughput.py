"""Photos flow through a real staging process several at a time (local backend, prefetch 4)."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from contracts.enums import RoomType, Style
from contracts.events import Envelope, ImageQueued
from devstack.services import ServiceProcess
from servicekit.messaging import EVENTS_EXCHANGE, create_broker
from servicekit.outbox import OutboxMessage
from servicekit.runtime import Runtime
from servicekit.storage import Storage
from servicekit.testing import TEST_INTERNAL_SECRET, InfraUrls, wait_for
from staging.backends.sample_room import sample_room
from staging.models import Job
from staging.settings import StagingSettings

pytestmark = pytest.mark.integration

logger = logging.getLogger(__name__)

PHOTOS = 30
BUCKET = "realstaging-test"


@pytest.fixture
async def settings(infra: InfraUrls, database_factory: Callable[..., Any]) -> StagingSettings:
    """Settings pointing at a fresh staging database, the test vhost and bucket."""
    return StagingSettings(
        environment="test",
        database_url=await database_factory("staging"),
        amqp_url=infra.amqp_url,
        internal_secret=TEST_INTERNAL_SECRET,
        s3_endpoint=infra.s3_endpoint,
        s3_access_key=infra.s3_access_key,
        s3_secret_key=infra.s3_secret_key,
        s3_bucket=BUCKET,
    )


@pytest.fixture
async def runtime(settings: StagingSettings) -> AsyncIterator[Runtime]:
    """Connections to read the worker's database."""
    rt = Runtime(settings)
    yield rt
    await rt.engine.dispose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _photo(seed: int) -> bytes:
    buf = io.BytesIO()
    sample_room(960, 640, seed=seed).save(buf, "JPEG", quality=88)
    return buf.getvalue()


async def test_thirty_photos_are_staged_several_at_a_time(
    infra: InfraUrls, settings: StagingSettings, runtime: Runtime, tmp_path: Path
) -> None:
    storage = Storage(settings)
    await storage.ensure_bucket()
    rooms, styles = list(RoomType), list(Style)
    envelopes = []
    for i in range(PHOTOS):
        user_id = uuid.uuid4()
        key = f"uploads/{user_id}/{uuid.uuid4().hex}.jpg"
        await storage.write(key, _photo(i % 5), "image/jpeg")
        event = ImageQueued(
            image_id=uuid.uuid4(),
            user_id=user_id,
            project_id=uuid.uuid4(),
            original_key=key,
            room_type=rooms[i % len(rooms)],
            style=styles[i % len(styles)],
            seed=i,
        )
        envelopes.append(Envelope.wrap(event, producer="projects"))

    port = _free_port()
    env = dict(os.environ)
    env.update(
        ENVIRONMENT="test",
        AMQP_URL=infra.amqp_url,
        INTERNAL_SECRET=TEST_INTERNAL_SECRET,
        S3_ENDPOINT=infra.s3_endpoint,
        S3_ACCESS_KEY=infra.s3_access_key,
        S3_SECRET_KEY=infra.s3_secret_key,
        S3_BUCKET=BUCKET,
        STAGING_DATABASE_URL=settings.database_url,
        STAGING_HOST="127.0.0.1",
        STAGING_PORT=str(port),
        STAGING_BACKEND="local",
        STAGING_CONSUMER_PREFETCH="4",
        PYTHONUNBUFFERED="1",
    )
    process = ServiceProcess("staging", env, port=port, log_path=tmp_path / "staging.log")
    process.start()
    try:
        await asyncio.to_thread(process.wait_ready, 60)
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

        async def all_ready() -> bool:
            async with runtime.sessionmaker() as session:
                ready = await session.scalar(
                    select(func.count())
                    .select_from(OutboxMessage)
                    .where(OutboxMessage.routing_key == "image.ready")
                )
            return ready == PHOTOS

        await wait_for(all_ready, within=240, interval=0.5)
    finally:
        process.stop()

    async with runtime.sessionmaker() as session:
        jobs = (await session.scalars(select(Job))).all()
    assert len(jobs) == PHOTOS
    assert {job.status for job in jobs} == {"completed"}
    assert all(job.runs == 1 for job in jobs)
    intervals = sorted(
        (job.started_at, job.finished_at)
        for job in jobs
        if job.started_at is not None and job.finished_at is not None
    )
    assert len(intervals) == PHOTOS
    # Sweep the start and end times: the most jobs running at one instant.
    events = sorted(
        [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
        key=lambda e: (e[0], e[1]),
    )
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    wall = (max(end for _, end in intervals) - min(start for start, _ in intervals)).total_seconds()
    logger.warning("staged %d photos in %.1f s, up to %d at once", PHOTOS, wall, peak)
    assert peak >= 2, "jobs ran one after another"
