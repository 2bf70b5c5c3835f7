"""The gateway with every service running: live updates, isolation, roles, internal identity."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from contracts.enums import Role
from contracts.identity import HEADER, Identity
from devstack.services import Stack
from servicekit.identity import sign_identity
from servicekit.testing import wait_for
from staging.backends.sample_room import sample_room

pytestmark = pytest.mark.e2e

JOURNEY_SECONDS = 90
PUBLIC = {("GET", "/v1/plans"), ("POST", "/v1/billing/webhooks/stripe")}


def _jpeg(width: int = 640, height: int = 480) -> bytes:
    buf = io.BytesIO()
    sample_room(width, height, seed=11).save(buf, "JPEG", quality=88)
    return buf.getvalue()


@dataclass
class Stream:
    """A live update stream read in the background, as a browser's EventSource would."""

    events: list[dict[str, Any]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def statuses(self, image_id: str | None = None) -> list[tuple[str, str, str]]:
        return [
            (e["id"], e["data"]["image_id"], e["data"]["status"])
            for e in self.events
            if e["event"] == "image.status"
            and (image_id is None or e["data"]["image_id"] == image_id)
        ]


@contextlib.asynccontextmanager
async def stream(
    gateway: str, auth: dict[str, str], last_event_id: str | None = None
) -> AsyncIterator[Stream]:
    """Open `GET /v1/events` with a fresh ticket and read it until the block ends."""
    async with httpx.AsyncClient(base_url=gateway, timeout=httpx.Timeout(30, read=None)) as c:
        ticket = (await c.post("/v1/events/ticket", headers=auth)).json()["ticket"]
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        async with c.stream("GET", "/v1/events", params={"ticket": ticket}, headers=headers) as r:
            assert r.status_code == 200
            out = Stream()

            async def pump() -> None:
                current: dict[str, str] = {}
                async for line in r.aiter_lines():
                    if not line:
                        if "data" in current:
                            out.events.append(
                                {
                                    "id": current.get("id"),
                                    "event": current.get("event"),
                                    "data": json.loads(current["data"]),
                                }
                            )
                        current = {}
                    elif not line.startswith(":"):
                        name, _, value = line.partition(":")
                        current[name] = value.removeprefix(" ")

            out.task = asyncio.ensure_future(pump())
            try:
                yield out
            finally:
                out.task.cancel()
                await asyncio.gather(out.task, return_exceptions=True)


async def sign_in(client: httpx.AsyncClient, name: str) -> dict[str, str]:
    sub = f"dev|{name}-{uuid.uuid4().hex[:6]}"
    token = await client.post("/v1/dev/token", json={"sub": sub, "email": f"{name}@example.com"})
    assert token.status_code == 200, token.text
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


async def new_image(
    client: httpx.AsyncClient, auth: dict[str, str], request_id: str | None = None
) -> tuple[str, str]:
    """Create a project and an image in it; (project id, image id)."""
    project = await client.post("/v1/projects", json={"name": "Elm St"}, headers=auth)
    assert project.status_code == 201, project.text
    upload = await client.post(
        "/v1/uploads", files={"file": ("room.jpg", _jpeg(), "image/jpeg")}, headers=auth
    )
    assert upload.status_code == 201, upload.text
    headers = auth | ({"X-Request-ID": request_id} if request_id else {})
    image = await client.post(
        f"/v1/projects/{project.json()['id']}/images",
        json={"key": upload.json()["key"], "room_type": "bedroom", "style": "coastal"},
        headers=headers,
    )
    assert image.status_code == 201, image.text
    return project.json()["id"], image.json()["id"]


def settled(s: Stream, image_id: str) -> bool:
    return any(status in ("ready", "error") for _, _, status in s.statuses(image_id))


class TestLiveUpdates:
    async def test_a_stream_sees_the_journey_in_order_and_resumes_without_loss(
        self, stack: Stack
    ) -> None:
        gateway = stack.url("gateway")
        request_id = f"e2e-{uuid.uuid4().hex}"
        async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
            alice = await sign_in(client, "alice")
            async with stream(gateway, alice) as live:
                await wait_for(lambda: live.events)
                snapshot = live.events[0]
                assert snapshot["event"] == "snapshot"
                _, image_id = await new_image(client, alice, request_id)
                await wait_for(lambda: settled(live, image_id), within=JOURNEY_SECONDS)
            journey = live.statuses(image_id)
            assert [status for _, _, status in journey] == ["queued", "processing", "ready"]
            assert live.statuses() == journey

            # Reconnect after the journey from each point: exactly what came after it.
            async with stream(gateway, alice, last_event_id=snapshot["id"]) as replay:
                await wait_for(lambda: len(replay.statuses()) >= len(journey))
            assert replay.statuses() == journey
            async with stream(gateway, alice, last_event_id=journey[0][0]) as rest:
                await wait_for(lambda: rest.statuses())
            assert rest.statuses() == journey[1:]

        # The request id travelled gateway → projects → staging → back to the gateway's logs.
        log = stack.log_dir / "gateway.log"
        await wait_for(lambda: request_id in log.read_text(errors="replace"))
        lines = [json.loads(x) for x in log.read_text().splitlines() if request_id in x]
        assert all(line["request_id"] == request_id for line in lines if line.get("msg"))


class TestIsolation:
    async def test_another_user_gets_404_for_everything_and_no_events(self, stack: Stack) -> None:
        gateway = stack.url("gateway")
        async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
            alice, bob = await sign_in(client, "alice"), await sign_in(client, "bob")
            async with stream(gateway, bob) as bobs_stream:
                async with stream(gateway, alice) as alices_stream:
                    project_id, image_id = await new_image(client, alice)
                    await wait_for(lambda: settled(alices_stream, image_id), within=JOURNEY_SECONDS)
                # Bob's own journey afterwards proves his stream was live all along.
                _, bobs_image = await new_image(client, bob)
                await wait_for(lambda: settled(bobs_stream, bobs_image), within=JOURNEY_SECONDS)
            assert {i for _, i, _ in bobs_stream.statuses()} == {bobs_image}
            async with stream(gateway, bob, last_event_id="0") as replay:
                await wait_for(lambda: settled(replay, bobs_image))
            assert {i for _, i, _ in replay.statuses()} == {bobs_image}

            spec = {"key": "x", "room_type": "bedroom", "style": "modern"}
            attempts = [
                ("GET", f"/v1/projects/{project_id}", None),
                ("PATCH", f"/v1/projects/{project_id}", {"name": "mine now"}),
                ("GET", f"/v1/projects/{project_id}/summary", None),
                ("GET", f"/v1/projects/{project_id}/images", None),
                ("POST", f"/v1/projects/{project_id}/images", spec),
                ("GET", f"/v1/images/{image_id}", None),
                ("GET", f"/v1/images/{image_id}/download?kind=original", None),
                ("GET", f"/v1/images/{image_id}/download?kind=staged", None),
                ("POST", f"/v1/images/{image_id}/restage", {}),
                ("DELETE", f"/v1/images/{image_id}", None),
                ("DELETE", f"/v1/projects/{project_id}", None),
            ]
            for method, path, body in attempts:
                response = await client.request(method, path, json=body, headers=bob)
                assert response.status_code == 404, (method, path, response.status_code)
                assert response.json()["error"].endswith("not_found")
                assert response.json()["request_id"] == response.headers["x-request-id"]
            mine = await client.get(f"/v1/images/{image_id}", headers=alice)
            assert mine.status_code == 200
            assert mine.json()["status"] == "ready"


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)


def _operations(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    ]


class TestRoles:
    async def test_a_user_gets_403_on_every_admin_endpoint(self, stack: Stack) -> None:
        async with httpx.AsyncClient(base_url=stack.url("gateway"), timeout=30) as client:
            user = await sign_in(client, "mallory")
            doc = (await client.get("/openapi.json")).json()
            admin_ops = {op for op in _operations(doc) if "/admin" in op[1]}
            admin_ops |= {
                ("GET", "/v1/admin/users"),
                ("PATCH", "/v1/admin/users/{user_id}"),
                ("GET", "/v1/admin/staging/jobs"),
                ("GET", "/v1/admin/staging/backend"),
                ("POST", "/v1/billing/admin/comp"),
            }
            for method, path in sorted(admin_ops):
                response = await client.request(
                    method, _concrete(path), json={"role": "admin"}, headers=user
                )
                assert response.status_code == 403, (method, path, response.status_code)
                assert response.json()["error"] == "forbidden"


class TestInternalIdentity:
    async def test_internal_services_refuse_calls_that_bypass_the_gateway(
        self, stack: Stack
    ) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            checked = 0
            for name in ("projects", "billing", "staging"):
                base = stack.url(name)
                doc = (await client.get(f"{base}/openapi.json")).json()
                for method, path in _operations(doc):
                    if (method, path) in PUBLIC or not path.startswith("/v1/"):
                        continue
                    for headers in ({}, {"X-Internal-Identity": "forged"}):
                        response = await client.request(
                            method, base + _concrete(path), json={}, headers=headers
                        )
                        assert response.status_code == 401, (name, method, path)
                        assert response.json()["error"] == "unauthorized"
                    checked += 1
            assert checked >= 10
            plans = await client.get(f"{stack.url('billing')}/v1/plans")
            assert plans.status_code == 200


class TestLiveHealing:
    async def test_a_journey_missed_while_the_gateway_was_down_shows_in_a_new_stream(
        self, stack: Stack
    ) -> None:
        gateway, projects = stack.url("gateway"), stack.url("projects")
        async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
            auth = await sign_in(client, "carol")
            user_id = uuid.UUID((await client.get("/v1/me", headers=auth)).json()["id"])
            project = await client.post("/v1/projects", json={"name": "Oak Ave"}, headers=auth)
            assert project.status_code == 201, project.text
        secret = stack.env("projects")["INTERNAL_SECRET"]

        def as_carol() -> dict[str, str]:
            identity = Identity(user_id=user_id, role=Role.USER, request_id=uuid.uuid4().hex)
            return {HEADER: sign_identity(identity, secret=secret, audience="projects")}

        process = stack.process("gateway")
        await asyncio.to_thread(process.stop)
        try:
            # The whole journey happens while no gateway replica listens for its events.
            async with httpx.AsyncClient(base_url=projects, timeout=30) as direct:
                upload = await direct.post(
                    "/v1/uploads",
                    files={"file": ("room.jpg", _jpeg(), "image/jpeg")},
                    headers=as_carol(),
                )
                assert upload.status_code == 201, upload.text
                created = await direct.post(
                    f"/v1/projects/{project.json()['id']}/images",
                    json={"key": upload.json()["key"], "room_type": "bedroom", "style": "modern"},
                    headers=as_carol(),
                )
                assert created.status_code == 201, created.text
                image_id = created.json()["id"]

                async def ready() -> bool:
                    image = await direct.get(f"/v1/images/{image_id}", headers=as_carol())
                    return bool(image.json()["status"] == "ready")

                await wait_for(ready, within=JOURNEY_SECONDS, interval=0.2)
        finally:
            await asyncio.to_thread(process.restart)
            await asyncio.to_thread(process.wait_ready)

        async with stream(gateway, auth) as live:
            await wait_for(lambda: live.events)
            snapshot = live.events[0]
            assert snapshot["event"] == "snapshot"
            assert snapshot["data"]["source"] == "projects"
            assert snapshot["data"]["images"] == []
            assert [(p["image_id"], p["status"]) for p in snapshot["data"]["recent"]] == [
                (image_id, "ready")
            ]
            # The correction is in the gateway's log too, so clients that only read
            # `image.status` (and later replays) see it.
            await wait_for(lambda: settled(live, image_id))
        assert [status for _, _, status in live.statuses(image_id)] == ["ready"]
