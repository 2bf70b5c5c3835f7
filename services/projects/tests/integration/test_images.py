"""Projects, uploads, images and the allowance on real PostgreSQL, RabbitMQ and S3."""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from contracts.enums import ImageStatus
from contracts.events import Envelope, ImageFailed, ImageProcessing, ImageReady
from projects.models import Image, OutboxMessage
from projects.service import apply_status
from projects.settings import ProjectsSettings
from servicekit.db import create_engine, create_sessionmaker, unit_of_work
from servicekit.outbox import apply_once
from servicekit.storage import Storage

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


def _item(key: str) -> dict[str, Any]:
    return {"key": key, "room_type": "living_room", "style": "modern"}


class TestAllowance:
    """The monthly allowance holds under concurrency."""

    async def test_twenty_parallel_requests_with_five_left_create_exactly_five(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        owner: Any,
        settings: ProjectsSettings,
        jpeg: bytes,
    ) -> None:
        project_id = await _project(client, owner)
        keys = [await _upload(storage, owner, jpeg) for _ in range(20)]
        responses = await asyncio.gather(
            *(
                client.post(
                    f"/v1/projects/{project_id}/images", json=_item(k), headers=owner.headers
                )
                for k in keys
            )
        )
        codes = sorted(r.status_code for r in responses)
        assert codes == [201] * 5 + [402] * 15
        refused = next(r for r in responses if r.status_code == 402).json()
        assert refused["error"] == "allowance_exceeded"
        assert refused["details"]["remaining"] == 0
        engine = create_engine(settings.database_url)
        async with create_sessionmaker(engine)() as session:
            count = await session.scalar(select(func.count()).select_from(Image))
            queued = await session.scalar(
                select(func.count()).where(OutboxMessage.routing_key == "image.queued")
            )
        await engine.dispose()
        assert (count, queued) == (5, 5)
        usage = (await client.get("/v1/usage", headers=owner.headers)).json()
        assert (usage["used"], usage["remaining"], usage["limit"]) == (5, 0, 5)

    async def test_batch_counts_every_photo(
        self, client: httpx.AsyncClient, storage: Storage, owner: Any, jpeg: bytes
    ) -> None:
        project_id = await _project(client, owner)
        keys = [await _upload(storage, owner, jpeg) for _ in range(6)]
        resp = await client.post(
            f"/v1/projects/{project_id}/images/batch",
            json={"images": [_item(k) for k in keys]},
            headers=owner.headers,
        )
        assert resp.status_code == 402
        assert "6 photo(s)" in resp.json()["message"]


class TestUploads:
    """Only real images of the caller's own, within the size limit, are accepted."""

    @pytest.mark.parametrize(
        ("data", "message"),
        [
            (b"just some text, not a photo", "not a JPEG, PNG, WebP or HEIC"),
            (b"", "empty"),
            (b"\xff\xd8\xff" + b"0" * (3 * 1024 * 1024), "larger than 2 MB"),
        ],
        ids=["text-renamed-jpg", "zero-bytes", "over-size"],
    )
    async def test_bad_uploads_are_refused_with_a_clear_message(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        owner: Any,
        data: bytes,
        message: str,
    ) -> None:
        project_id = await _project(client, owner)
        key = await _upload(storage, owner, data)
        resp = await client.post(
            f"/v1/projects/{project_id}/images", json=_item(key), headers=owner.headers
        )
        assert resp.status_code == 422
        assert resp.json()["error"] == "invalid_upload"
        assert message in resp.json()["message"]

    async def test_keys_outside_the_callers_prefix_are_refused(
        self, client: httpx.AsyncClient, storage: Storage, owner: Any, jpeg: bytes, new_owner: Any
    ) -> None:
        project_id = await _project(client, owner)
        stranger = new_owner()
        key = await _upload(storage, stranger, jpeg)
        resp = await client.post(
            f"/v1/projects/{project_id}/images", json=_item(key), headers=owner.headers
        )
        assert resp.status_code == 422
        assert "does not belong to you" in resp.json()["message"]

    async def test_missing_object_is_refused(self, client: httpx.AsyncClient, owner: Any) -> None:
        project_id = await _project(client, owner)
        key = f"uploads/{owner.id}/never-uploaded.jpg"
        resp = await client.post(
            f"/v1/projects/{project_id}/images", json=_item(key), headers=owner.headers
        )
        assert resp.status_code == 422
        assert "not found" in resp.json()["message"]

    async def test_multipart_upload_sniffs_the_real_type(
        self, client: httpx.AsyncClient, owner: Any, jpeg: bytes
    ) -> None:
        ok = await client.post(
            "/v1/uploads",
            files={"file": ("a.jpg", jpeg, "image/jpeg")},
            headers=owner.headers,
        )
        assert ok.status_code == 201, ok.text
        assert ok.json()["key"].startswith(f"uploads/{owner.id}/")
        bad = await client.post(
            "/v1/uploads",
            files={"file": ("a.jpg", b"<script>", "image/jpeg")},
            headers=owner.headers,
        )
        assert bad.status_code == 422


class TestBatch:
    """A batch is created whole or not at all."""

    async def test_batch_with_one_invalid_item_creates_nothing_and_names_it(
        self, client: httpx.AsyncClient, storage: Storage, owner: Any, jpeg: bytes
    ) -> None:
        project_id = await _project(client, owner)
        good = [await _upload(storage, owner, jpeg) for _ in range(2)]
        bad = await _upload(storage, owner, b"not an image")
        resp = await client.post(
            f"/v1/projects/{project_id}/images/batch",
            json={"images": [_item(good[0]), _item(bad), _item(good[1])]},
            headers=owner.headers,
        )
        assert resp.status_code == 422
        assert resp.json()["details"][0]["field"] == "images[1].key"
        listing = await client.get(f"/v1/projects/{project_id}/images", headers=owner.headers)
        assert listing.json()["items"] == []

    async def test_more_than_fifty_is_a_validation_error(
        self, client: httpx.AsyncClient, owner: Any
    ) -> None:
        project_id = await _project(client, owner)
        items = [_item(f"uploads/{owner.id}/{i}.jpg") for i in range(51)]
        resp = await client.post(
            f"/v1/projects/{project_id}/images/batch",
            json={"images": items},
            headers=owner.headers,
        )
        assert resp.status_code == 422
        assert resp.json()["error"] == "validation_failed"


class TestOwnership:
    """Everything is scoped to its owner."""

    async def test_other_users_get_404(
        self, client: httpx.AsyncClient, storage: Storage, owner: Any, jpeg: bytes, new_owner: Any
    ) -> None:
        project_id = await _project(client, owner)
        key = await _upload(storage, owner, jpeg)
        image = (
            await client.post(
                f"/v1/projects/{project_id}/images", json=_item(key), headers=owner.headers
            )
        ).json()
        other = new_owner()
        for path in (
            f"/v1/projects/{project_id}",
            f"/v1/projects/{project_id}/images",
            f"/v1/images/{image['id']}",
            f"/v1/images/{image['id']}/download?kind=original",
        ):
            assert (await client.get(path, headers=other.headers)).status_code == 404, path
        assert (
            await client.delete(f"/v1/images/{image['id']}", headers=other.headers)
        ).status_code == 404

    async def test_requests_without_the_gateways_identity_get_401(
        self, client: httpx.AsyncClient
    ) -> None:
        resp = await client.get("/v1/projects")
        assert resp.status_code == 401
        forged = await client.get(
            "/v1/projects", headers={"X-Internal-Identity": "eyJhbGciOiJub25lIn0.e30."}
        )
        assert forged.status_code == 401


class TestStatusUpdates:
    """Staging's reports move an image forward only."""

    async def test_stale_events_never_move_an_image_backwards(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        owner: Any,
        settings: ProjectsSettings,
        jpeg: bytes,
    ) -> None:
        project_id = await _project(client, owner)
        key = await _upload(storage, owner, jpeg)
        image = (
            await client.post(
                f"/v1/projects/{project_id}/images", json=_item(key), headers=owner.headers
            )
        ).json()
        image_id = uuid.UUID(image["id"])
        ready = Envelope.wrap(
            ImageReady(
                image_id=image_id, user_id=owner.id, staged_key="staged/x.jpg", backend="local"
            ),
            producer="staging",
        )
        processing = Envelope.wrap(
            ImageProcessing(image_id=image_id, user_id=owner.id, backend="local"),
            producer="staging",
        )
        engine = create_engine(settings.database_url)
        sessions = create_sessionmaker(engine)

        async def effect(session: Any, env: Envelope[Any]) -> None:
            await apply_status(session, env, bucket="realstaging-test")

        assert await apply_once(sessions, "t", ready, effect)
        assert await apply_once(sessions, "t", processing, effect)
        assert not await apply_once(sessions, "t", ready, effect)
        async with unit_of_work(sessions) as session:
            row = await session.get(Image, image_id)
            assert row is not None
            assert row.status == ImageStatus.READY
            assert row.staged_url == "s3://realstaging-test/staged/x.jpg"
        await engine.dispose()

    async def test_a_retried_job_that_succeeds_replaces_the_failure(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        owner: Any,
        settings: ProjectsSettings,
        jpeg: bytes,
    ) -> None:
        project_id = await _project(client, owner)
        key = await _upload(storage, owner, jpeg)
        image = (
            await client.post(
                f"/v1/projects/{project_id}/images", json=_item(key), headers=owner.headers
            )
        ).json()
        image_id = uuid.UUID(image["id"])
        engine = create_engine(settings.database_url)
        sessions = create_sessionmaker(engine)

        async def effect(session: Any, env: Envelope[Any]) -> None:
            await apply_status(session, env, bucket="realstaging-test")

        failed = ImageFailed(image_id=image_id, user_id=owner.id, reason="model timed out")
        late_processing = ImageProcessing(image_id=image_id, user_id=owner.id, backend="local")
        ready = ImageReady(
            image_id=image_id, user_id=owner.id, staged_key="staged/y.jpg", backend="local"
        )
        for event in (failed, late_processing):
            await apply_once(sessions, "t", Envelope.wrap(event, producer="staging"), effect)
        body = (await client.get(f"/v1/images/{image_id}", headers=owner.headers)).json()
        assert (body["status"], body["error"]) == ("error", "model timed out")
        await apply_once(sessions, "t", Envelope.wrap(ready, producer="staging"), effect)
        body = (await client.get(f"/v1/images/{image_id}", headers=owner.headers)).json()
        assert (body["status"], body["error"], body["has_staged"]) == ("ready", None, True)
        await engine.dispose()


class TestRestageAndSummary:
    """Restaging is a new, counted attempt; the summary adds up."""

    async def test_restage_creates_a_new_counted_attempt(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        owner: Any,
        settings: ProjectsSettings,
        jpeg: bytes,
    ) -> None:
        project_id = await _project(client, owner)
        key = await _upload(storage, owner, jpeg)
        image = (
            await client.post(
                f"/v1/projects/{project_id}/images", json=_item(key), headers=owner.headers
            )
        ).json()
        too_early = await client.post(
            f"/v1/images/{image['id']}/restage", json={"style": "rustic"}, headers=owner.headers
        )
        assert too_early.status_code == 409
        engine = create_engine(settings.database_url)
        sessions = create_sessionmaker(engine)

        async def effect(session: Any, env: Envelope[Any]) -> None:
            await apply_status(session, env, bucket="realstaging-test")

        ready = ImageReady(
            image_id=uuid.UUID(image["id"]), user_id=owner.id, staged_key="s/1.jpg", backend="local"
        )
        await apply_once(sessions, "t", Envelope.wrap(ready, producer="staging"), effect)
        again = await client.post(
            f"/v1/images/{image['id']}/restage",
            json={"style": "rustic", "room_type": "bedroom"},
            headers=owner.headers,
        )
        assert again.status_code == 200, again.text
        body = again.json()
        assert (body["status"], body["attempt"], body["style"], body["room_type"]) == (
            "queued",
            2,
            "rustic",
            "bedroom",
        )
        async with sessions() as session:
            queued = (
                await session.scalars(
                    select(OutboxMessage).where(OutboxMessage.routing_key == "image.queued")
                )
            ).all()
        await engine.dispose()
        assert sorted(q.payload["data"]["attempt"] for q in queued) == [1, 2]
        usage = (await client.get("/v1/usage", headers=owner.headers)).json()
        assert usage["used"] == 2
        summary = (
            await client.get(f"/v1/projects/{project_id}/summary", headers=owner.headers)
        ).json()
        assert summary["image_count"] == 1
        assert summary["by_status"] == {"queued": 1, "processing": 0, "ready": 0, "error": 0}

    async def test_projects_are_listed_newest_first_with_a_cursor(
        self, client: httpx.AsyncClient, owner: Any
    ) -> None:
        for i in range(5):
            await client.post("/v1/projects", json={"name": f"P{i}"}, headers=owner.headers)
        first = (await client.get("/v1/projects?limit=3", headers=owner.headers)).json()
        assert [p["name"] for p in first["items"]] == ["P4", "P3", "P2"]
        rest = (
            await client.get(
                f"/v1/projects?limit=3&cursor={first['next_cursor']}", headers=owner.headers
            )
        ).json()
        assert [p["name"] for p in rest["items"]] == ["P1", "P0"]
        assert rest["next_cursor"] is None
        bad = await client.get("/v1/projects?cursor=not-a-cursor", headers=owner.headers)
        assert bad.status_code == 400
        assert bad.json()["error"] == "invalid_cursor"

    async def test_deleting_a_project_deletes_its_images_and_announces_their_objects(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        owner: Any,
        settings: ProjectsSettings,
        jpeg: bytes,
    ) -> None:
        project_id = await _project(client, owner)
        key = await _upload(storage, owner, jpeg)
        image = (
            await client.post(
                f"/v1/projects/{project_id}/images", json=_item(key), headers=owner.headers
            )
        ).json()
        engine = create_engine(settings.database_url)
        async with create_sessionmaker(engine)() as session:
            row = await session.get(Image, uuid.UUID(image["id"]))
            assert row is not None
            original = row.original_key
        assert original.startswith(f"originals/{owner.id}/{image['id']}/")
        deleted = await client.delete(f"/v1/projects/{project_id}", headers=owner.headers)
        assert deleted.status_code == 204
        assert (
            await client.get(f"/v1/images/{image['id']}", headers=owner.headers)
        ).status_code == 404
        async with create_sessionmaker(engine)() as session:
            event = (
                await session.scalars(
                    select(OutboxMessage).where(OutboxMessage.routing_key == "project.deleted")
                )
            ).one()
        await engine.dispose()
        assert event.payload["data"]["image_ids"] == [image["id"]]
        # The image's own copy goes; the upload stays for the sweeper (another image may use it).
        assert event.payload["data"]["keys"] == [original]


class TestHostileText:
    """Text PostgreSQL cannot store, or that would break file names, is a 4xx."""

    @pytest.mark.parametrize(
        "name",
        ["nul\u0000byte", "bell\u0007", "x" * 101, "   "],
        ids=["nul", "bell", "long", "blank"],
    )
    async def test_bad_project_names_are_422(
        self, client: httpx.AsyncClient, owner: Any, name: str
    ) -> None:
        resp = await client.post("/v1/projects", json={"name": name}, headers=owner.headers)
        assert resp.status_code == 422
        assert resp.json()["error"] == "validation_failed"

    @pytest.mark.parametrize(
        "name",
        [
            "‮gnp.exe",
            "zero\u200bwidth",
            "🏠 Loft",
            "<script>alert(1)</script>",
            "'; DROP TABLE projects;--",
        ],
    )
    async def test_odd_but_printable_names_are_stored_verbatim(
        self, client: httpx.AsyncClient, owner: Any, name: str
    ) -> None:
        resp = await client.post("/v1/projects", json={"name": name}, headers=owner.headers)
        assert resp.status_code == 201
        got = await client.get(f"/v1/projects/{resp.json()['id']}", headers=owner.headers)
        assert got.json()["name"] == name

    async def test_out_of_range_cursor_is_400(self, client: httpx.AsyncClient, owner: Any) -> None:
        cursor = base64.urlsafe_b64encode(
            f"0001-01-01T00:00:00+14:00|{uuid.uuid4()}".encode()
        ).decode()
        resp = await client.get(f"/v1/projects?cursor={cursor}", headers=owner.headers)
        assert resp.status_code == 400


class TestIdempotency:
    """A retried create request gets the same images, and is charged once."""

    async def test_a_retry_with_the_same_key_creates_nothing_new(
        self, client: httpx.AsyncClient, storage: Storage, owner: Any, jpeg: bytes
    ) -> None:
        project_id = await _project(client, owner)
        key = await _upload(storage, owner, jpeg)
        headers = owner.headers | {"Idempotency-Key": "create-1"}
        url = f"/v1/projects/{project_id}/images"
        first, second = await asyncio.gather(
            client.post(url, json=_item(key), headers=headers),
            client.post(
                url, json=_item(key), headers=owner.headers | {"Idempotency-Key": "create-1"}
            ),
        )
        third = await client.post(url, json=_item(key), headers=headers)
        assert (first.status_code, second.status_code, third.status_code) == (201, 201, 201)
        assert first.json()["id"] == second.json()["id"] == third.json()["id"]
        usage = (await client.get("/v1/usage", headers=owner.headers)).json()
        assert usage["used"] == 1
        listing = (await client.get(f"{url}", headers=owner.headers)).json()
        assert len(listing["items"]) == 1

    async def test_the_same_key_for_another_request_is_refused(
        self, client: httpx.AsyncClient, storage: Storage, owner: Any, jpeg: bytes
    ) -> None:
        project_id = await _project(client, owner)
        key = await _upload(storage, owner, jpeg)
        url = f"/v1/projects/{project_id}/images"
        headers = owner.headers | {"Idempotency-Key": "k"}
        assert (await client.post(url, json=_item(key), headers=headers)).status_code == 201
        other = {**_item(key), "style": "rustic"}
        reused = await client.post(url, json=other, headers=headers)
        assert reused.status_code == 422
        assert reused.json()["error"] == "idempotency_key_reused"

    async def test_a_failed_request_does_not_use_up_its_key(
        self, client: httpx.AsyncClient, storage: Storage, owner: Any, jpeg: bytes
    ) -> None:
        project_id = await _project(client, owner)
        key = f"uploads/{owner.id}/later.jpg"
        url = f"/v1/projects/{project_id}/images"
        headers = owner.headers | {"Idempotency-Key": "later"}
        assert (await client.post(url, json=_item(key), headers=headers)).status_code == 422
        await storage.write(key, jpeg, "image/jpeg")
        assert (await client.post(url, json=_item(key), headers=headers)).status_code == 201
