"""Outages longer than the whole retry ladder heal by themselves; the audit proves nothing is left.

The stack runs with a scaled time configuration (`SCALED_TIME`: ladder 0.2, 0.5, 1, 2 s, so
3.7 s in all; reconcilers every second; settle requests after 5 s) and reaches PostgreSQL,
RabbitMQ and S3 through TCP proxies, one per service database. Each outage keeps one dependency
away for `OUTAGE_SECONDS`, well past the ladder: today's give-up. Afterwards every photo must be
`ready` (or `error` with a reason) with no restart, usage must be exact and the invariant audit
clean. The shared PostgreSQL, RabbitMQ and S3 servers are never stopped.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import aio_pika
import httpx
import pytest
from minio import Minio

from contracts.topology import ALL_QUEUES
from servicekit.testing import InfraUrls
from tests.support.stackkit import (
    SCALED_ORPHAN_GRACE_SECONDS,
    SCALED_TIME,
    Api,
    ProxiedStack,
    fetch,
    is_envelope,
    jpeg,
    proxied_stack,
)

pytestmark = pytest.mark.e2e

OUTAGE_SECONDS = 9.0
"""Longer than the retry ladder (3.7 s) more than twice over."""
FAIL_FAST_SECONDS = 5.0
AUDIT = {"unfinished_after_seconds": 30.0, "orphan_grace_seconds": SCALED_ORPHAN_GRACE_SECONDS}
"""Audit windows for the scaled stack: settle requests start after 5 s, so 30 s is generous."""


@pytest.fixture(scope="module")
def healing_stack(
    infra: InfraUrls, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxiedStack]:
    """A stack of its own, on scaled time, whose every dependency can be cut."""
    extra = {**SCALED_TIME, "GATEWAY_RATE_LIMIT_ENABLED": "false"}
    with proxied_stack(
        infra, tmp_path_factory.mktemp("healing-stack"), name="healing", extra_env=extra
    ) as ps:
        yield ps


@pytest.fixture
def api(healing_stack: ProxiedStack) -> Iterator[Api]:
    """A client of the stack's gateway, every proxy forwarding, no message parked."""
    # So that one failed test does not take the next one down: the audit is stack-wide.
    healing_stack.restore_all()
    for spec in ALL_QUEUES:
        asyncio.run(_drain(healing_stack.amqp_url, spec.dead_letter))
    with Api(healing_stack.gateway, timeout=30) as client:
        yield client


def _poll(predicate: Callable[[], Any], *, within: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        try:
            last = predicate()
        except httpx.HTTPError as exc:
            last = exc
        else:
            if last is not None and last is not False:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen within {within} s (last: {last!r})")
        time.sleep(interval)


def _readyz(ps: ProxiedStack, service: str) -> httpx.Response:
    return httpx.get(ps.stack.url(service) + "/readyz", timeout=10)


def _pids(ps: ProxiedStack) -> dict[str, int | None]:
    return {name: ps.stack.process(name).pid for name in ("gateway", "projects", "staging")}


def _all_alive(ps: ProxiedStack) -> None:
    for name in ("gateway", "projects", "staging", "billing"):
        process = ps.stack.process(name)
        assert process.running, f"{name} exited:\n{process.log_tail()}"
        assert httpx.get(process.url + "/healthz", timeout=5).status_code == 200, name


def _unfinished(ps: ProxiedStack, image_ids: list[str]) -> int:
    rows = asyncio.run(
        fetch(
            ps.dsn("projects"),
            "SELECT count(*) AS n FROM images WHERE id = ANY($1::uuid[]) "
            "AND status IN ('queued', 'processing')",
            image_ids,
        )
    )
    return int(rows[0]["n"])


def _s3(ps: ProxiedStack) -> tuple[Minio, str]:
    host = ps.s3_endpoint.split("://", 1)[1]
    client = Minio(
        host,
        access_key=ps.s3_access_key,
        secret_key=ps.s3_secret_key,
        secure=False,
        region="us-east-1",
    )
    return client, ps.stack.env("projects")["S3_BUCKET"]


class TestLongOutages:
    """One dependency away for longer than the retry ladder; everything heals without help."""

    @pytest.mark.parametrize("dependency", ["projects", "staging", "amqp", "s3"])
    def test_photos_settle_usage_is_exact_and_the_audit_is_clean(
        self, healing_stack: ProxiedStack, api: Api, dependency: str
    ) -> None:
        ps = healing_stack
        proxy = ps.proxy(dependency)
        pids = _pids(ps)
        auth = api.sign_in()
        project_id = api.project(auth, f"Outage of {dependency}")
        keys = [api.upload_key(auth, jpeg(640, 480, seed=i)) for i in range(6)]
        image_ids = [
            api.create_image(auth, project_id, key, seed=i).json()["id"]
            for i, key in enumerate(keys[:4])
        ]
        before = proxy.stats.refused + proxy.stats.dropped

        proxy.cut()
        cut_at = time.monotonic()
        try:
            assert _unfinished(ps, image_ids) >= 1, "the outage must catch work in flight"
            if dependency in ("staging", "amqp"):
                # Projects still answers: photos asked for now wait for the dependency.
                for i, key in enumerate(keys[4:], start=4):
                    resp = api.create_image(auth, project_id, key, seed=i)
                    assert resp.status_code == 201, resp.text
                    image_ids.append(resp.json()["id"])
            else:
                # Creating needs what is away: refused at once, and nothing half-made.
                started = time.monotonic()
                resp = api.create_image(auth, project_id, keys[4], seed=4)
                assert resp.status_code == 503, resp.text
                assert time.monotonic() - started < FAIL_FAST_SECONDS
                assert is_envelope(resp.json()), resp.text
            remaining = OUTAGE_SECONDS - (time.monotonic() - cut_at)
            if remaining > 0:
                _poll(
                    lambda: time.monotonic() - cut_at >= OUTAGE_SECONDS,
                    within=remaining + 1,
                    what="the end of the outage",
                )
            _all_alive(ps)
        finally:
            proxy.restore()
        assert proxy.stats.refused + proxy.stats.dropped > before, "the outage reached someone"

        settled = api.wait_settled(auth, image_ids, within=90)
        for body in settled.values():
            assert body["status"] == "ready" or (body["error"] or "").strip(), body
        ready = sum(1 for b in settled.values() if b["status"] == "ready")
        used = int(api.client.get("/v1/usage", headers=auth).json()["used"])
        # One charge per photo asked for; a failure may be refunded, nothing is charged twice.
        assert ready <= used <= len(image_ids), (used, ready, len(image_ids))
        assert _pids(ps) == pids, "no service was restarted"
        ps.wait_audit_clean(within=30, **AUDIT)


class TestDatabaseOutage:
    """All of PostgreSQL unreachable: not ready, fast 503s, and back by itself."""

    def test_requests_fail_fast_and_recover_without_restarts(
        self, healing_stack: ProxiedStack, api: Api
    ) -> None:
        ps = healing_stack
        pids = _pids(ps)
        auth = api.sign_in()
        api.project(auth, "Before the outage")

        ps.pg.cut()
        try:
            not_ready = _poll(
                lambda: (r := _readyz(ps, "projects")).status_code == 503 and r,
                within=10,
                what="projects /readyz 503",
            )
            body = not_ready.json()
            assert is_envelope(body), body
            assert body["details"]["database"].startswith("unavailable"), body
            for _ in range(3):
                started = time.monotonic()
                resp = api.client.post("/v1/projects", json={"name": "During"}, headers=auth)
                elapsed = time.monotonic() - started
                assert resp.status_code == 503, resp.text
                assert elapsed < FAIL_FAST_SECONDS, f"took {elapsed:.1f} s"
                body = resp.json()
                assert is_envelope(body), body
                assert "unavailable" in body["message"].lower(), body
                assert resp.headers.get("x-request-id") == body["request_id"]
            for name in ("gateway", "staging", "billing"):
                resp = _poll(
                    lambda n=name: (r := _readyz(ps, n)).status_code == 503 and r,
                    within=10,
                    what=f"{name} /readyz 503",
                )
                assert is_envelope(resp.json()), resp.text
            _all_alive(ps)
        finally:
            ps.pg.restore()

        for name in ("gateway", "projects", "staging", "billing"):
            _poll(
                lambda n=name: _readyz(ps, n).status_code == 200,
                within=30,
                what=f"{name} ready again",
            )
        created = _poll(
            lambda: (
                (
                    r := api.client.post("/v1/projects", json={"name": "After"}, headers=auth)
                ).status_code
                == 201
                and r
            ),
            within=30,
            what="POST /v1/projects answering 201 again",
        )
        assert created.json()["name"] == "After"
        names = {p["name"] for p in api.client.get("/v1/projects", headers=auth).json()["items"]}
        assert names == {"Before the outage", "After"}, "nothing half-written during the outage"
        assert _pids(ps) == pids, "no service was restarted"


class TestBrokerBlip:
    """A short broker drop in the middle of the work loses nothing and runs nothing twice."""

    def test_a_broker_blip_mid_flight_loses_nothing(
        self, healing_stack: ProxiedStack, api: Api
    ) -> None:
        ps = healing_stack
        auth = api.sign_in()
        project_id = api.project(auth, "Blip")
        keys = [api.upload_key(auth, jpeg(480, 320, seed=10 + i)) for i in range(6)]
        image_ids = [
            api.create_image(auth, project_id, key, seed=i).json()["id"]
            for i, key in enumerate(keys)
        ]
        # Cut while the first images are being processed and their events are in flight.
        _poll(
            lambda: any(api.image(auth, i)["status"] != "queued" for i in image_ids),
            within=30,
            what="staging starting work",
            interval=0.05,
        )
        ps.amqp.cut()
        try:
            _poll(
                lambda: _readyz(ps, "staging").status_code == 503,
                within=15,
                what="staging /readyz 503 without the broker",
            )
        finally:
            ps.amqp.restore()
        settled = api.wait_settled(auth, image_ids, within=120)
        assert {b["status"] for b in settled.values()} == {"ready"}, settled
        for image_id in image_ids:
            jobs = asyncio.run(
                fetch(
                    ps.dsn("staging"),
                    "SELECT status FROM jobs WHERE image_id = $1::uuid",
                    image_id,
                )
            )
            assert [j["status"] for j in jobs] == ["completed"], (image_id, jobs)
        ps.wait_audit_clean(within=30, **AUDIT)


class TestAudit:
    """The audit on a real stack: clean when sound, and it names what was broken."""

    def test_a_sound_stack_is_clean(self, healing_stack: ProxiedStack, api: Api) -> None:
        auth = api.sign_in()
        project_id = api.project(auth, "Sound")
        image_id = api.create_image(auth, project_id, api.upload_key(auth, jpeg())).json()["id"]
        api.wait_settled(auth, [image_id], within=60)
        report = healing_stack.wait_audit_clean(within=30, **AUDIT)
        assert report.checked["images"] >= 1
        assert report.checked["objects"] >= 2
        assert report.checked["users' usage"] >= 1
        assert report.checked["dead-letter queues"] == len(ALL_QUEUES)

    def test_unfinished_images_and_pending_events_are_found(
        self, healing_stack: ProxiedStack, api: Api
    ) -> None:
        ps = healing_stack
        auth = api.sign_in()
        project_id = api.project(auth, "Held back")
        key = api.upload_key(auth, jpeg())
        ps.amqp.cut()
        try:
            image_id = api.create_image(auth, project_id, key).json()["id"]
            report = ps.audit(unfinished_after_seconds=0, outbox_grace_seconds=0)
        finally:
            ps.amqp.restore()
        found = {(v.check, v.ids[0]) for v in report.violations if v.ids}
        assert ("unfinished", image_id) in found, report.lines()
        assert any(v.check == "outbox" and "image.queued" in v.message for v in report.violations)
        api.wait_settled(auth, [image_id], within=60)

    def test_missing_orphan_double_charged_and_parked_are_found(
        self, healing_stack: ProxiedStack, api: Api
    ) -> None:
        ps = healing_stack
        auth = api.sign_in()
        project_id = api.project(auth, "Broken on purpose")
        image_id = api.create_image(auth, project_id, api.upload_key(auth, jpeg())).json()["id"]
        assert api.wait_settled(auth, [image_id], within=60)[image_id]["status"] == "ready"
        row = asyncio.run(
            fetch(
                ps.dsn("projects"),
                "SELECT user_id::text AS user_id, staged_key FROM images WHERE id = $1::uuid",
                image_id,
            )
        )[0]
        s3, bucket = _s3(ps)
        staged = s3.get_object(bucket, row["staged_key"])
        staged_bytes = staged.read()
        staged.close()
        orphan = f"staged/{row['user_id']}/{uuid.uuid4()}/1-1.jpg"
        dlq = ALL_QUEUES[0].dead_letter
        try:
            s3.remove_object(bucket, row["staged_key"])
            s3.put_object(bucket, orphan, io.BytesIO(b"stray"), 5)
            asyncio.run(
                fetch(
                    ps.dsn("projects"),
                    "INSERT INTO usage_charges (user_id, image_id, attempt) "
                    "VALUES ($1::uuid, $2::uuid, 1)",
                    row["user_id"],
                    image_id,
                )
            )
            asyncio.run(_park(ps.amqp_url, dlq))
            report = ps.audit(orphan_grace_seconds=0)
            found = {(v.check, v.ids[0]) for v in report.violations if v.ids}
            assert ("missing-object", image_id) in found, report.lines()
            assert ("orphan-object", orphan) in found, report.lines()
            assert ("double-charge", image_id) in found, report.lines()
            assert ("overcharge", image_id) in found, report.lines()
            assert ("dead-letters", dlq) in found, report.lines()
        finally:
            s3.put_object(bucket, row["staged_key"], io.BytesIO(staged_bytes), len(staged_bytes))
            s3.remove_object(bucket, orphan)
            asyncio.run(
                fetch(
                    ps.dsn("projects"),
                    "DELETE FROM usage_charges WHERE id = (SELECT id FROM usage_charges "
                    "WHERE image_id = $1::uuid ORDER BY charged_at DESC LIMIT 1)",
                    image_id,
                )
            )
            asyncio.run(_drain(ps.amqp_url, dlq))
        ps.wait_audit_clean(within=30, **AUDIT)


async def _park(amqp_url: str, queue: str) -> None:
    """Put one message straight into a dead-letter queue, as a parked message."""
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, passive=True)
        await channel.default_exchange.publish(
            aio_pika.Message(b"{}", message_id=str(uuid.uuid4())), routing_key=queue
        )


async def _drain(amqp_url: str, queue: str) -> None:
    """Remove every message from a queue."""
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        await declared.purge()
