"""The read the gateway's live updates use: the caller's images that are unfinished or asked for."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from contracts.events import Envelope, ImageReady
from projects.service import apply_status
from projects.settings import ProjectsSettings
from servicekit.db import create_engine, create_sessionmaker
from servicekit.outbox import apply_once
from servicekit.storage import Storage

pytestmark = pytest.mark.integration


async def _image(client: httpx.AsyncClient, storage: Storage, owner: Any, jpeg: bytes) -> str:
    project = await client.post("/v1/projects", json={"name": "Live"}, headers=owner.headers)
    assert project.status_code == 201, project.text
    key = f"uploads/{owner.id}/{uuid.uuid4().hex}-room.jpg"
    await storage.ensure_bucket()
    await storage.write(key, jpeg, "image/jpeg")
    created = await client.post(
        f"/v1/projects/{project.json()['id']}/images",
        json={"key": key, "room_type": "bedroom", "style": "modern"},
        headers=owner.headers,
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def _ready(settings: ProjectsSettings, owner: Any, image_id: str) -> None:
    engine = create_engine(settings.database_url)
    ready = Envelope.wrap(
        ImageReady(
            image_id=uuid.UUID(image_id),
            user_id=owner.id,
            staged_key=f"staged/{owner.id}/{image_id}/1.jpg",
            backend="local",
        ),
        producer="staging",
    )

    async def effect(session: Any, env: Envelope[Any]) -> None:
        await apply_status(session, env, bucket=settings.s3_bucket)

    try:
        await apply_once(create_sessionmaker(engine), "test", ready, effect)
    finally:
        await engine.dispose()


class TestLiveImages:
    async def test_unfinished_images_are_listed_and_finished_ones_only_when_asked(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        settings: ProjectsSettings,
        owner: Any,
        jpeg: bytes,
    ) -> None:
        queued = await _image(client, storage, owner, jpeg)
        done = await _image(client, storage, owner, jpeg)
        await _ready(settings, owner, done)

        plain = await client.get("/v1/live/images", headers=owner.headers)
        assert plain.status_code == 200, plain.text
        assert plain.json()["complete"] is True
        assert [i["id"] for i in plain.json()["items"]] == [queued]
        assert plain.json()["items"][0]["status"] == "queued"

        asked = await client.get(
            "/v1/live/images", params={"image_id": [done]}, headers=owner.headers
        )
        by_id = {i["id"]: i for i in asked.json()["items"]}
        assert by_id[done]["status"] == "ready"
        assert by_id[done]["has_staged"] is True
        assert set(by_id) == {queued, done}

        since = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
        recent = await client.get(
            "/v1/live/images", params={"updated_since": since}, headers=owner.headers
        )
        assert {i["id"] for i in recent.json()["items"]} == {queued, done}

    async def test_deleted_and_other_users_images_are_absent(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        owner: Any,
        new_owner: Any,
        jpeg: bytes,
    ) -> None:
        gone = await _image(client, storage, owner, jpeg)
        deleted = await client.delete(f"/v1/images/{gone}", headers=owner.headers)
        assert deleted.status_code == 204
        theirs = await _image(client, storage, new_owner(), jpeg)

        answer = await client.get(
            "/v1/live/images", params={"image_id": [gone, theirs]}, headers=owner.headers
        )
        assert answer.status_code == 200
        assert answer.json() == {"items": [], "complete": True}

    async def test_a_long_answer_says_it_is_incomplete(
        self, client: httpx.AsyncClient, storage: Storage, owner: Any, jpeg: bytes
    ) -> None:
        for _ in range(3):
            await _image(client, storage, owner, jpeg)
        answer = await client.get("/v1/live/images", params={"limit": 2}, headers=owner.headers)
        assert len(answer.json()["items"]) == 2
        assert answer.json()["complete"] is False

    async def test_a_call_without_an_identity_is_refused(self, client: httpx.AsyncClient) -> None:
        assert (await client.get("/v1/live/images")).status_code == 401
