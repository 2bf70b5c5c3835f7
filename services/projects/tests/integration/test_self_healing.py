"""Self-healing on real PostgreSQL, RabbitMQ and S3: own originals, replay after delete, the
reconciler and the sweepers."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import httpx
import pytest
from minio import Minio
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.enums import ImageStatus
from contracts.events import Envelope, ImageFailed, ImageReady
from contracts.topology import EXCHANGE
from projects.app import create_app
from projects.maintenance import (
    Reconciled,
    reconcile_images,
    sweep_idempotency_keys,
    sweep_orphan_originals,
    sweep_uploads,
)
from projects.models import IdempotencyKey, Image, OutboxMessage
from projects.service import GAVE_UP_REASON, apply_status
from projects.settings import ProjectsSettings
from servicekit.db import unit_of_work
from servicekit.outbox import apply_once
from servicekit.storage import Storage
from servicekit.testing import InfraUrls, running, wait_for

pytestmark = pytest.mark.integration


async def _project(client: httpx.AsyncClient, owner: Any) -> str:
    resp = await client.post("/v1/projects", json={"name": "Listing"}, headers=owner.headers)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


async def _upload(storage: Storage, owner: Any, data: bytes, name: str = "room.jpg") -> str:
    key = f"uploads/{owner.id}/{uuid.uuid4().hex}-{name}"
    await storage.ensure_bucket()
    await storage.write(key, data, "image/jpeg")
    return key


def _item(key: str, **extra: Any) -> dict[str, Any]:
    return {"key": key, "room_type": "living_room", "style": "modern", **extra}


async def _create(
    client: httpx.AsyncClient, owner: Any, project_id: str, key: str, **headers: str
) -> httpx.Response:
    return await client.post(
        f"/v1/projects/{project_id}/images", json=_item(key), headers=owner.headers | headers
    )


async def _row(sessions: async_sessionmaker[AsyncSession], image_id: Any) -> Image:
    async with sessions() as session:
        row = await session.get(Image, uuid.UUID(str(image_id)))
    assert row is not None
    return row


async def _events(sessions: async_sessionmaker[AsyncSession], routing_key: str) -> list[Any]:
    async with sessions() as session:
        rows = (
            await session.scalars(
                select(OutboxMessage)
                .where(OutboxMessage.routing_key == routing_key)
                .order_by(OutboxMessage.created_at)
            )
        ).all()
    return [r.payload["data"] for r in rows]


async def _report(
    sessions: async_sessionmaker[AsyncSession], settings: ProjectsSettings, event: Any
) -> bool:
    """Deliver a staging status event as the consumer would."""

    async def effect(session: AsyncSession, env: Envelope[Any]) -> None:
        await apply_status(session, env, bucket=settings.s3_bucket)

    return await apply_once(
        sessions, "projects.image-status", Envelope.wrap(event, producer="staging"), effect
    )


async def _download(client: httpx.AsyncClient, owner: Any, image_id: str) -> httpx.Response:
    link = await client.get(f"/v1/images/{image_id}/download?kind=original", headers=owner.headers)
    assert link.status_code == 200, link.text
    async with httpx.AsyncClient() as s3:
        return await s3.get(link.json()["url"])


class TestOwnOriginals:
    """Every image has its own copy of its upload."""

    async def test_deleting_one_of_two_images_from_one_upload_leaves_the_other_whole(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        sessions: async_sessionmaker[AsyncSession],
        settings: ProjectsSettings,
        owner: Any,
        jpeg: bytes,
    ) -> None:
        project_id = await _project(client, owner)
        upload = await _upload(storage, owner, jpeg, "Front Room.jpg")
        first, second = [(await _create(client, owner, project_id, upload)).json() for _ in "ab"]
        one, two = await _row(sessions, first["id"]), await _row(sessions, second["id"])
        assert one.original_key == f"originals/{owner.id}/{one.id}/Front-Room.jpg"
        assert two.original_key.startswith(f"originals/{owner.id}/{two.id}/")
        assert two.original_url == f"s3://{settings.s3_bucket}/{two.original_key}"
        assert await storage.read(two.original_key) == jpeg

        assert (
            await client.delete(f"/v1/images/{first['id']}", headers=owner.headers)
        ).status_code == 204
        (deleted,) = await _events(sessions, "image.deleted")
        assert deleted["keys"] == [one.original_key]
        # What staging does with the event: remove the keys it names.
        await storage.remove(*deleted["keys"])
        # A late outcome for the deleted image never brings it back.
        late = ImageReady(
            image_id=one.id, user_id=owner.id, staged_key="staged/late.jpg", backend="local"
        )
        await _report(sessions, settings, late)
        async with sessions() as session:
            assert await session.get(Image, one.id) is None

        got = await _download(client, owner, second["id"])
        assert (got.status_code, got.content) == (200, jpeg)
        staged = ImageReady(
            image_id=two.id, user_id=owner.id, staged_key="staged/x/1.jpg", backend="local"
        )
        await _report(sessions, settings, staged)
        again = await client.post(
            f"/v1/images/{second['id']}/restage", json={}, headers=owner.headers
        )
        assert again.status_code == 200, again.text
        queued = await _events(sessions, "image.queued")
        assert [(q["image_id"], q["attempt"], q["original_key"]) for q in queued[-1:]] == [
            (second["id"], 2, two.original_key)
        ]
        assert await storage.stat(two.original_key) is not None

    async def test_one_upload_twice_in_a_batch_gets_two_originals_and_replays_keep_them(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        sessions: async_sessionmaker[AsyncSession],
        owner: Any,
        jpeg: bytes,
    ) -> None:
        project_id = await _project(client, owner)
        upload = await _upload(storage, owner, jpeg)
        url = f"/v1/projects/{project_id}/images/batch"
        headers = owner.headers | {"Idempotency-Key": "batch-1"}
        body = {"images": [_item(upload), _item(upload, style="rustic")]}
        first = await client.post(url, json=body, headers=headers)
        replay = await client.post(url, json=body, headers=headers)
        assert (first.status_code, replay.status_code) == (201, 201)
        ids = [i["id"] for i in first.json()["items"]]
        assert [i["id"] for i in replay.json()["items"]] == ids
        keys = {(await _row(sessions, i)).original_key for i in ids}
        assert len(keys) == 2
        assert upload not in keys
        for key in keys:
            assert await storage.read(key) == jpeg

    async def test_an_upload_that_vanishes_is_refused_before_anything_is_charged(
        self, client: httpx.AsyncClient, owner: Any
    ) -> None:
        project_id = await _project(client, owner)
        resp = await _create(client, owner, project_id, f"uploads/{owner.id}/gone.jpg")
        assert resp.status_code == 422
        usage = (await client.get("/v1/usage", headers=owner.headers)).json()
        assert usage["used"] == 0


class TestReplayAfterDelete:
    """An Idempotency-Key whose images were deleted answers 409, not 500."""

    async def test_replay_after_the_image_was_deleted_is_a_clear_conflict(
        self, client: httpx.AsyncClient, storage: Storage, owner: Any, jpeg: bytes
    ) -> None:
        project_id = await _project(client, owner)
        upload = await _upload(storage, owner, jpeg)
        created = await _create(client, owner, project_id, upload, **{"Idempotency-Key": "k1"})
        image_id = created.json()["id"]
        await client.delete(f"/v1/images/{image_id}", headers=owner.headers)
        replay = await _create(client, owner, project_id, upload, **{"Idempotency-Key": "k1"})
        assert replay.status_code == 409
        body = replay.json()
        assert body["error"] == "idempotency_images_deleted"
        assert "deleted" in body["message"]
        assert body["details"] == {"deleted": [image_id]}
        usage = (await client.get("/v1/usage", headers=owner.headers)).json()
        assert usage["used"] == 1

    async def test_replay_after_part_of_a_batch_was_deleted_names_the_missing(
        self, client: httpx.AsyncClient, storage: Storage, owner: Any, jpeg: bytes
    ) -> None:
        project_id = await _project(client, owner)
        uploads = [await _upload(storage, owner, jpeg) for _ in range(2)]
        url = f"/v1/projects/{project_id}/images/batch"
        headers = owner.headers | {"Idempotency-Key": "b"}
        body = {"images": [_item(k) for k in uploads]}
        created = await client.post(url, json=body, headers=headers)
        ids = [i["id"] for i in created.json()["items"]]
        await client.delete(f"/v1/images/{ids[1]}", headers=owner.headers)
        replay = await client.post(url, json=body, headers=headers)
        assert replay.status_code == 409
        assert replay.json()["details"] == {"deleted": [ids[1]]}


class TestReconciler:
    """Stuck attempts are settled, at most once per period, and end in error past the deadline."""

    async def test_a_stuck_image_is_settled_once_per_period_then_given_up_and_restaged(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        sessions: async_sessionmaker[AsyncSession],
        settings: ProjectsSettings,
        owner: Any,
        jpeg: bytes,
    ) -> None:
        project_id = await _project(client, owner)
        upload = await _upload(storage, owner, jpeg)
        image = (await _create(client, owner, project_id, upload)).json()
        row = await _row(sessions, image["id"])
        start = datetime.now(UTC)
        period = timedelta(seconds=settings.settle_after_seconds)

        async def reconcile(at: datetime) -> tuple[int, int]:
            async with unit_of_work(sessions) as session:
                done = await reconcile_images(session, settings, now=at)
            return done.settle_requested, done.gave_up

        assert await reconcile(start) == (0, 0)
        first = start + period + timedelta(seconds=1)
        assert await reconcile(first) == (1, 0)
        assert await reconcile(first) == (0, 0)
        assert await reconcile(first + period - timedelta(seconds=2)) == (0, 0)
        assert await reconcile(first + period + timedelta(seconds=1)) == (1, 0)
        settles = await _events(sessions, "image.settle")
        assert len(settles) == 2
        assert settles[0] == {
            "image_id": image["id"],
            "user_id": str(owner.id),
            "project_id": project_id,
            "original_key": row.original_key,
            "room_type": "living_room",
            "style": "modern",
            "seed": None,
            "attempt": 1,
        }
        assert (await _row(sessions, image["id"])).settle_requests == 2

        late = start + timedelta(seconds=settings.give_up_after_seconds + 1)
        assert await reconcile(late) == (0, 1)
        assert await reconcile(late + 10 * period) == (0, 0)
        body = (await client.get(f"/v1/images/{image['id']}", headers=owner.headers)).json()
        assert (body["status"], body["error"]) == ("error", GAVE_UP_REASON)
        (failed,) = await _events(sessions, "image.failed")
        assert (failed["image_id"], failed["attempt"], failed["reason"]) == (
            image["id"],
            1,
            GAVE_UP_REASON,
        )

        restage = f"/v1/images/{image['id']}/restage"
        again = await client.post(restage, json={}, headers=owner.headers)
        assert again.status_code == 200, again.text
        assert (again.json()["status"], again.json()["attempt"]) == ("queued", 2)
        restaged = await _row(sessions, image["id"])
        assert (restaged.settle_requests, restaged.settle_requested_at) == (0, None)
        assert await reconcile(datetime.now(UTC)) == (0, 0)
        # The old attempt's outcome, arriving late, no longer touches the image.
        stale = ImageReady(
            image_id=row.id, user_id=owner.id, staged_key="staged/old.jpg", backend="local"
        )
        await _report(sessions, settings, stale)
        assert (await _row(sessions, image["id"])).status == ImageStatus.QUEUED

    async def test_progress_postpones_settling_and_the_deadline_needs_an_unanswered_request(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        sessions: async_sessionmaker[AsyncSession],
        settings: ProjectsSettings,
        owner: Any,
        jpeg: bytes,
    ) -> None:
        project_id = await _project(client, owner)
        upload = await _upload(storage, owner, jpeg)
        image = (await _create(client, owner, project_id, upload)).json()
        # Far past the deadline with no request sent yet (the reconciler was down): ask first.
        late = datetime.now(UTC) + timedelta(seconds=settings.give_up_after_seconds + 60)
        async with unit_of_work(sessions) as session:
            assert (await reconcile_images(session, settings, now=late)).settle_requested == 1
        async with unit_of_work(sessions) as session:
            await session.execute(
                update(Image).where(Image.id == uuid.UUID(image["id"])).values(updated_at=late)
            )
        # Staging reported progress at `late`: nothing is due until a period after it.
        period = timedelta(seconds=settings.settle_after_seconds)
        async with unit_of_work(sessions) as session:
            almost = late + period - timedelta(seconds=1)
            assert await reconcile_images(session, settings, now=almost) == Reconciled(0, 0)
        async with unit_of_work(sessions) as session:
            after = late + period + timedelta(seconds=1)
            assert await reconcile_images(session, settings, now=after) == Reconciled(0, 1)

    async def test_late_outcomes_after_giving_up_are_applied_sanely(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        sessions: async_sessionmaker[AsyncSession],
        settings: ProjectsSettings,
        owner: Any,
        jpeg: bytes,
    ) -> None:
        project_id = await _project(client, owner)
        made = [
            (await _create(client, owner, project_id, await _upload(storage, owner, jpeg))).json()
            for _ in range(2)
        ]
        async with unit_of_work(sessions) as session:
            await session.execute(
                update(Image)
                .where(Image.project_id == uuid.UUID(project_id))
                .values(status=ImageStatus.ERROR, error=GAVE_UP_REASON)
            )
        ready_id, failed_id = (uuid.UUID(m["id"]) for m in made)
        ready = ImageReady(
            image_id=ready_id, user_id=owner.id, staged_key="staged/r.jpg", backend="local"
        )
        failed = ImageFailed(image_id=failed_id, user_id=owner.id, reason="The photo is blank.")
        assert await _report(sessions, settings, ready)
        assert await _report(sessions, settings, failed)
        done = await _row(sessions, ready_id)
        assert (done.status, done.error, done.staged_key) == (
            ImageStatus.READY,
            None,
            "staged/r.jpg",
        )
        refused = await _row(sessions, failed_id)
        assert (refused.status, refused.error) == (ImageStatus.ERROR, "The photo is blank.")

        # Staging re-announcing an outcome (a settle answered twice) changes nothing.
        again_ready = ready.model_copy(update={"staged_key": "staged/other.jpg"})
        again_failed = failed.model_copy(update={"reason": "Something else."})
        assert await _report(sessions, settings, again_ready)
        assert await _report(sessions, settings, again_failed)
        after = await _row(sessions, ready_id)
        assert (after.status, after.staged_key, after.updated_at) == (
            ImageStatus.READY,
            "staged/r.jpg",
            done.updated_at,
        )
        assert (await _row(sessions, failed_id)).error == "The photo is blank."

    async def test_the_running_service_settles_gives_up_and_announces_it(
        self,
        make_settings: Callable[..., ProjectsSettings],
        owner: Any,
        jpeg: bytes,
    ) -> None:
        settings = make_settings(
            reconcile_interval_seconds=0.1,
            settle_after_seconds=0.5,
            give_up_after_seconds=1.5,
            outbox_poll_seconds=0.1,
        )
        app = create_app(settings)
        storage = Storage(settings)
        async with running(app):
            await wait_for(app.state.runtime.broker_ready.is_set)
            connection = await aio_pika.connect(settings.amqp_url)
            async with connection:
                channel = await connection.channel()
                exchange = await channel.get_exchange(EXCHANGE)
                queue = await channel.declare_queue(exclusive=True)
                await queue.bind(exchange, "image.settle")
                await queue.bind(exchange, "image.failed")
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://p") as client:
                    project_id = await _project(client, owner)
                    upload = await _upload(storage, owner, jpeg)
                    image_id = (await _create(client, owner, project_id, upload)).json()["id"]
                    received: list[dict[str, Any]] = []

                    async def failed_announced() -> bool:
                        while (message := await queue.get(fail=False)) is not None:
                            await message.ack()
                            received.append(json.loads(message.body))
                        return any(e["event_type"] == "image.failed" for e in received)

                    await wait_for(failed_announced, within=20)
                    got = (await client.get(f"/v1/images/{image_id}", headers=owner.headers)).json()
                    assert (got["status"], got["error"]) == ("error", GAVE_UP_REASON)
                    restaged = await client.post(
                        f"/v1/images/{image_id}/restage", json={}, headers=owner.headers
                    )
                    assert restaged.status_code == 200, restaged.text
        settles = [e for e in received if e["event_type"] == "image.settle"]
        assert settles, "the stuck image was never asked to settle"
        assert {(e["data"]["image_id"], e["data"]["attempt"]) for e in settles} == {(image_id, 1)}
        times = [datetime.fromisoformat(e["occurred_at"]) for e in settles]
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        # Once per period, never more often (the reconciler itself runs five times as often).
        assert all(gap >= settings.settle_after_seconds * 0.95 for gap in gaps), gaps
        assert len(settles) <= settings.give_up_after_seconds / settings.settle_after_seconds + 1


class TestSweepers:
    """Old uploads, orphan originals and old idempotency keys go; nothing else does."""

    @pytest.fixture
    async def bucket(self, infra: InfraUrls) -> AsyncIterator[str]:
        """A bucket of the test's own, so sweeping never touches another test's objects."""
        name = f"sweep-{uuid.uuid4().hex[:12]}"
        yield name
        client = Minio(
            urlsplit(infra.s3_endpoint).netloc,
            access_key=infra.s3_access_key,
            secret_key=infra.s3_secret_key,
            secure=False,
            region="us-east-1",
        )

        def drop() -> None:
            if client.bucket_exists(name):
                for obj in client.list_objects(name, recursive=True):
                    client.remove_object(name, obj.object_name or "")
                client.remove_bucket(name)

        await asyncio.to_thread(drop)

    @pytest.fixture
    def isolated(
        self, make_settings: Callable[..., ProjectsSettings], bucket: str
    ) -> ProjectsSettings:
        """Settings whose bucket is the test's own."""
        return make_settings(s3_bucket=bucket)

    async def test_old_uploads_and_orphan_originals_go_and_nothing_else(
        self,
        isolated: ProjectsSettings,
        sessions: async_sessionmaker[AsyncSession],
        owner: Any,
        jpeg: bytes,
    ) -> None:
        storage = Storage(isolated)
        app = create_app(isolated)
        async with running(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://p") as client:
                project_id = await _project(client, owner)
                used = await _upload(storage, owner, jpeg)
                image_id = (await _create(client, owner, project_id, used)).json()["id"]
                owned = (await _row(sessions, image_id)).original_key
                unused = await _upload(storage, owner, jpeg)
                legacy = await _upload(storage, owner, jpeg)
                async with unit_of_work(sessions) as session:
                    # An image made before originals were copied: its original is the upload.
                    session.add(
                        Image(
                            project_id=uuid.UUID(project_id),
                            user_id=owner.id,
                            original_key=legacy,
                            original_url=f"s3://{isolated.s3_bucket}/{legacy}",
                            status=ImageStatus.READY,
                        )
                    )
                orphan = f"originals/{owner.id}/{uuid.uuid4()}/rolled-back.jpg"
                staged = f"staged/{owner.id}/{image_id}/1-1.jpg"
                for key in (orphan, staged):
                    await storage.write(key, jpeg, "image/jpeg")
                everything = {used, owned, unused, legacy, orphan, staged}

                async def sweep(at: datetime) -> tuple[int, int]:
                    async with unit_of_work(sessions) as session:
                        uploads = await sweep_uploads(session, storage, isolated, now=at)
                        originals = await sweep_orphan_originals(session, storage, isolated, now=at)
                    return uploads, originals

                async def present() -> set[str]:
                    return {o.key for o in await storage.list("")}

                assert await sweep(datetime.now(UTC)) == (0, 0)
                assert await present() == everything
                hour = datetime.now(UTC) + timedelta(seconds=isolated.orphan_grace_seconds + 60)
                assert await sweep(hour) == (0, 1)
                assert await present() == everything - {orphan}
                day = datetime.now(UTC) + timedelta(seconds=isolated.upload_retention_seconds + 60)
                assert await sweep(day) == (2, 0)
                assert await present() == {owned, legacy, staged}
                got = await _download(client, owner, image_id)
                assert (got.status_code, got.content) == (200, jpeg)

    async def test_old_idempotency_keys_are_forgotten_and_young_ones_kept(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        sessions: async_sessionmaker[AsyncSession],
        settings: ProjectsSettings,
        owner: Any,
        jpeg: bytes,
    ) -> None:
        project_id = await _project(client, owner)
        upload = await _upload(storage, owner, jpeg)
        for key in ("old", "young"):
            created = await _create(client, owner, project_id, upload, **{"Idempotency-Key": key})
            assert created.status_code == 201
        retention = timedelta(seconds=settings.idempotency_retention_seconds)
        async with unit_of_work(sessions) as session:
            await session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.key == "old")
                .values(created_at=datetime.now(UTC) - retention - timedelta(minutes=1))
            )
        async with unit_of_work(sessions) as session:
            assert await sweep_idempotency_keys(session, settings) == 1
        async with unit_of_work(sessions) as session:
            assert await sweep_idempotency_keys(session, settings) == 0
            left = (await session.scalars(select(IdempotencyKey.key))).all()
        assert left == ["young"]

    async def test_the_running_service_sweeps_on_its_own(
        self, make_settings: Callable[..., ProjectsSettings], bucket: str, owner: Any, jpeg: bytes
    ) -> None:
        settings = make_settings(
            s3_bucket=bucket,
            sweep_interval_seconds=0.2,
            upload_retention_seconds=3.0,
            orphan_grace_seconds=3.0,
        )
        storage = Storage(settings)
        app = create_app(settings)
        async with running(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://p") as client:
                project_id = await _project(client, owner)
                upload = await _upload(storage, owner, jpeg)
                image_id = (await _create(client, owner, project_id, upload)).json()["id"]
                orphan = f"originals/{owner.id}/{uuid.uuid4()}/rolled-back.jpg"
                await storage.write(orphan, jpeg, "image/jpeg")

                async def swept() -> bool:
                    gone = not await storage.list("uploads/")
                    return gone and await storage.stat(orphan) is None

                await wait_for(swept, within=20, interval=0.2)
                assert await storage.stat(orphan) is None
                got = await _download(client, owner, image_id)
                assert (got.status_code, got.content) == (200, jpeg)
