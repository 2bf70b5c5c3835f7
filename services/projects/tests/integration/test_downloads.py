"""Downloads: presigned links and the streamed project zip."""

from __future__ import annotations

import io
import uuid
import zipfile
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


async def _staged_image(
    client: httpx.AsyncClient,
    storage: Storage,
    settings: ProjectsSettings,
    owner: Any,
    project_id: str,
    jpeg: bytes,
    filename: str,
) -> tuple[str, bytes]:
    """An image whose staging finished, with distinct staged bytes."""
    await storage.ensure_bucket()
    key = f"uploads/{owner.id}/{uuid.uuid4().hex}-{filename}"
    await storage.write(key, jpeg, "image/jpeg")
    created = await client.post(
        f"/v1/projects/{project_id}/images",
        json={"key": key, "room_type": "bedroom", "style": "modern", "filename": filename},
        headers=owner.headers,
    )
    assert created.status_code == 201, created.text
    image_id = uuid.UUID(created.json()["id"])
    staged = jpeg + uuid.uuid4().bytes
    staged_key = f"staged/{owner.id}/{image_id}/1.jpg"
    await storage.write(staged_key, staged, "image/jpeg")
    engine = create_engine(settings.database_url)
    ready = Envelope.wrap(
        ImageReady(image_id=image_id, user_id=owner.id, staged_key=staged_key, backend="local"),
        producer="staging",
    )

    async def effect(session: Any, env: Envelope[Any]) -> None:
        await apply_status(session, env, bucket=settings.s3_bucket)

    await apply_once(create_sessionmaker(engine), "test", ready, effect)
    await engine.dispose()
    return str(image_id), staged


class TestProjectZip:
    """The zip holds every staged photo of the project and nothing else."""

    async def test_zip_contains_every_staged_photo_and_nothing_of_another_user(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        settings: ProjectsSettings,
        owner: Any,
        new_owner: Any,
        jpeg: bytes,
    ) -> None:
        mine = (
            await client.post("/v1/projects", json={"name": "Elm St"}, headers=owner.headers)
        ).json()
        expected = {}
        for name in ("kitchen.jpg", "bedroom.jpg", "bedroom.jpg"):
            _, data = await _staged_image(client, storage, settings, owner, mine["id"], jpeg, name)
            expected.setdefault(name, []).append(data)
        stranger = new_owner()
        theirs = (
            await client.post("/v1/projects", json={"name": "Oak"}, headers=stranger.headers)
        ).json()
        _, foreign = await _staged_image(
            client, storage, settings, stranger, theirs["id"], jpeg, "secret.jpg"
        )

        resp = await client.get(f"/v1/projects/{mine['id']}/download.zip", headers=owner.headers)
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"] == "application/zip"
        assert 'filename="Elm-St-staged.zip"' in resp.headers["content-disposition"]
        archive = zipfile.ZipFile(io.BytesIO(resp.content))
        names = sorted(archive.namelist())
        assert names == ["bedroom-staged-2.jpg", "bedroom-staged.jpg", "kitchen-staged.jpg"]
        contents = [archive.read(n) for n in names]
        assert sorted(contents) == sorted(expected["bedroom.jpg"] + expected["kitchen.jpg"])
        assert foreign not in contents

        other = await client.get(
            f"/v1/projects/{mine['id']}/download.zip", headers=stranger.headers
        )
        assert other.status_code == 404

    async def test_empty_project_has_nothing_to_download(
        self, client: httpx.AsyncClient, owner: Any
    ) -> None:
        project = (
            await client.post("/v1/projects", json={"name": "x"}, headers=owner.headers)
        ).json()
        resp = await client.get(f"/v1/projects/{project['id']}/download.zip", headers=owner.headers)
        assert resp.status_code == 404
        assert resp.json()["error"] == "nothing_to_download"


class TestDownloadLinks:
    """Presigned links are short-lived and name the file."""

    async def test_staged_link_downloads_the_staged_photo_with_a_proper_name(
        self,
        client: httpx.AsyncClient,
        storage: Storage,
        settings: ProjectsSettings,
        owner: Any,
        jpeg: bytes,
    ) -> None:
        project = (
            await client.post("/v1/projects", json={"name": "x"}, headers=owner.headers)
        ).json()
        image_id, staged = await _staged_image(
            client, storage, settings, owner, project["id"], jpeg, "living room.jpg"
        )
        link = await client.get(
            f"/v1/images/{image_id}/download?kind=staged", headers=owner.headers
        )
        assert link.status_code == 200
        body = link.json()
        assert body["filename"] == "living-room-staged.jpg"
        assert body["expires_in"] == settings.download_url_ttl_seconds
        async with httpx.AsyncClient() as s3:
            fetched = await s3.get(body["url"])
            tampered = await s3.get(body["url"].replace("staged", "uploads", 1))
        assert fetched.content == staged
        assert "living-room-staged.jpg" in fetched.headers.get("content-disposition", "")
        assert tampered.status_code == 403
