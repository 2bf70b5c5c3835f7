"""A photo's journey through the gateway, with every service running as its own process."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
import zipfile

import asyncpg
import httpx
import pytest
from minio import Minio
from minio.error import S3Error
from PIL import Image, ImageChops, ImageStat

from devstack.services import Stack
from staging.backends.sample_room import sample_room

pytestmark = pytest.mark.e2e


def _jpeg(width: int = 960, height: int = 640) -> bytes:
    buf = io.BytesIO()
    sample_room(width, height, seed=7).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _sign_in(client: httpx.Client, sub: str) -> dict[str, str]:
    resp = client.post(
        "/v1/dev/token", json={"sub": sub, "email": f"{sub.split('|')[-1]}@example.com"}
    )
    assert resp.status_code == 200, resp.text
    return {"Authorization": f"Bearer {resp.json()['access_token']}"}


def _wait_until_settled(client: httpx.Client, image_id: str, headers: dict[str, str]) -> dict:
    deadline = time.monotonic() + 90
    seen: list[str] = []
    while time.monotonic() < deadline:
        body = client.get(f"/v1/images/{image_id}", headers=headers).json()
        if not seen or seen[-1] != body["status"]:
            seen.append(body["status"])
        if body["status"] in ("ready", "error"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"image {image_id} still {seen[-1]} after 90 s (seen {seen})")


async def _jobs_of(stack: Stack, image_id: uuid.UUID) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(
        stack.env("staging")["STAGING_DATABASE_URL"].replace("+asyncpg", "")
    )
    try:
        return await conn.fetch(
            "SELECT type, status, started_at, finished_at FROM jobs WHERE image_id = $1", image_id
        )
    finally:
        await conn.close()


class TestPhotoJourney:
    """Sign in, create a project, upload, stage and download, all through the gateway."""

    def test_a_photo_is_staged_end_to_end(self, stack: Stack) -> None:
        original = _jpeg()
        with httpx.Client(base_url=stack.url("gateway"), timeout=30) as client:
            plans = client.get("/v1/plans")
            assert plans.status_code == 200, plans.text
            assert [p["code"] for p in plans.json()["items"]] == ["free", "pro", "business"]

            alice = _sign_in(client, f"dev|alice-{uuid.uuid4().hex[:6]}")
            me = client.get("/v1/me", headers=alice)
            assert me.status_code == 200, me.text
            assert me.json()["role"] == "user"

            project = client.post("/v1/projects", json={"name": "12 Elm Street"}, headers=alice)
            assert project.status_code == 201, project.text
            project_id = project.json()["id"]

            presign = client.post(
                "/v1/uploads/presign",
                json={
                    "filename": "living room.jpg",
                    "content_type": "image/jpeg",
                    "size": len(original),
                },
                headers=alice,
            )
            assert presign.status_code == 200, presign.text
            upload = presign.json()
            put = httpx.put(upload["upload_url"], content=original, headers=upload["headers"])
            assert put.status_code in (200, 204), put.text

            created = client.post(
                f"/v1/projects/{project_id}/images",
                json={
                    "key": upload["key"],
                    "room_type": "living_room",
                    "style": "scandinavian",
                    "seed": 42,
                },
                headers=alice,
            )
            assert created.status_code == 201, created.text
            image = created.json()
            assert image["status"] == "queued"

            settled = _wait_until_settled(client, image["id"], alice)
            assert settled["status"] == "ready", settled
            assert settled["has_staged"] is True

            link = client.get(f"/v1/images/{image['id']}/download?kind=staged", headers=alice)
            assert link.status_code == 200, link.text
            assert link.json()["filename"] == "living-room-staged.jpg"
            staged_bytes = httpx.get(link.json()["url"]).content

            archive = client.get(f"/v1/projects/{project_id}/download.zip", headers=alice)
            assert archive.status_code == 200, archive.text
            with zipfile.ZipFile(io.BytesIO(archive.content)) as bundle:
                assert bundle.namelist() == ["living-room-staged.jpg"]
                assert bundle.read("living-room-staged.jpg") == staged_bytes

        staged = Image.open(io.BytesIO(staged_bytes))
        assert staged.format == "JPEG"
        before = Image.open(io.BytesIO(original)).convert("RGB")
        assert staged.size == before.size
        diff = ImageStat.Stat(ImageChops.difference(before, staged.convert("RGB"))).mean
        assert sum(diff) / 3 > 2, "the staged photo should visibly differ from the original"
        assert not staged.getexif(), "staged photos carry no EXIF"

    def test_staging_keeps_one_job_per_attempt(self, stack: Stack) -> None:
        with httpx.Client(base_url=stack.url("gateway"), timeout=30) as client:
            bob = _sign_in(client, f"dev|bob-{uuid.uuid4().hex[:6]}")
            project_id = client.post("/v1/projects", json={"name": "Loft"}, headers=bob).json()[
                "id"
            ]
            key = client.post(
                "/v1/uploads",
                files={"file": ("bedroom.jpg", _jpeg(640, 480), "image/jpeg")},
                headers=bob,
            ).json()["key"]
            image = client.post(
                f"/v1/projects/{project_id}/images",
                json={"key": key, "room_type": "bedroom", "style": "rustic"},
                headers=bob,
            ).json()
            assert _wait_until_settled(client, image["id"], bob)["status"] == "ready"
        jobs = asyncio.run(_jobs_of(stack, uuid.UUID(image["id"])))
        assert len(jobs) == 1
        assert jobs[0]["type"] == "stage:run"
        assert jobs[0]["status"] == "completed"
        assert jobs[0]["started_at"] <= jobs[0]["finished_at"]

    def test_another_user_sees_nothing(self, stack: Stack) -> None:
        with httpx.Client(base_url=stack.url("gateway"), timeout=30) as client:
            carol = _sign_in(client, f"dev|carol-{uuid.uuid4().hex[:6]}")
            dave = _sign_in(client, f"dev|dave-{uuid.uuid4().hex[:6]}")
            project_id = client.post("/v1/projects", json={"name": "Mine"}, headers=carol).json()[
                "id"
            ]
            assert client.get(f"/v1/projects/{project_id}", headers=dave).status_code == 404
            assert client.get(f"/v1/projects/{project_id}", headers=carol).status_code == 200
            listing = client.get("/v1/projects", headers=dave).json()
            assert all(p["id"] != project_id for p in listing["items"])

    def test_services_refuse_requests_that_bypass_the_gateway(self, stack: Stack) -> None:
        for name in ("projects", "billing", "staging"):
            resp = httpx.get(f"{stack.url(name)}/v1/projects")
            assert resp.status_code in (401, 404), (name, resp.status_code)
        assert httpx.get(f"{stack.url('projects')}/v1/projects").status_code == 401
        assert httpx.get(f"{stack.url('staging')}/v1/admin/staging/jobs").status_code == 401


class TestDeletion:
    """Deleting removes the photos from storage too."""

    def test_deleting_a_project_removes_its_stored_photos(self, stack: Stack) -> None:
        infra = stack.infra
        storage = Minio(
            infra.s3_endpoint.split("://", 1)[1],
            access_key=infra.s3_access_key,
            secret_key=infra.s3_secret_key,
            secure=False,
        )
        with httpx.Client(base_url=stack.url("gateway"), timeout=30) as client:
            erin = _sign_in(client, f"dev|erin-{uuid.uuid4().hex[:6]}")
            project_id = client.post("/v1/projects", json={"name": "Sold"}, headers=erin).json()[
                "id"
            ]
            key = client.post(
                "/v1/uploads",
                files={"file": ("hall.jpg", _jpeg(320, 240), "image/jpeg")},
                headers=erin,
            ).json()["key"]
            image = client.post(
                f"/v1/projects/{project_id}/images",
                json={"key": key, "room_type": "entryway", "style": "coastal"},
                headers=erin,
            ).json()
            assert _wait_until_settled(client, image["id"], erin)["status"] == "ready"
            stored = [
                o.object_name
                for prefix in ("originals/", "staged/")
                for o in storage.list_objects(infra.s3_bucket, prefix=prefix, recursive=True)
                if image["id"] in o.object_name
            ]
            assert any(k.startswith("staged/") for k in stored), "the staged photo is stored"
            assert any(k.startswith("originals/") for k in stored), "the image has its original"
            assert client.delete(f"/v1/projects/{project_id}", headers=erin).status_code == 204
            assert client.get(f"/v1/images/{image['id']}", headers=erin).status_code == 404

        def gone(name: str) -> bool:
            try:
                storage.stat_object(infra.s3_bucket, name)
            except S3Error:
                return True
            return False

        deadline = time.monotonic() + 30
        # The upload itself waits for the upload sweeper: the image had a copy of its own.
        while not all(gone(k) for k in stored):
            assert time.monotonic() < deadline, "stored photos were not removed within 30 s"
            time.sleep(0.1)
