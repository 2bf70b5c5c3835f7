"""Outages of PostgreSQL and RabbitMQ: services stay up, fail fast, lose nothing, and recover.

The shared PostgreSQL and RabbitMQ are never stopped: this module's own stack reaches them through
TCP proxies that the tests cut and restore.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from servicekit.testing import InfraUrls
from tests.support.stackkit import (
    Api,
    ProxiedStack,
    dead_letter_counts,
    fetch,
    is_envelope,
    jpeg,
    proxied_stack,
)

pytestmark = pytest.mark.e2e

FAIL_FAST_SECONDS = 5.0


@pytest.fixture(scope="module")
def outage_stack(
    infra: InfraUrls, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxiedStack]:
    """A stack of its own whose database and broker connections can be cut."""
    with proxied_stack(infra, tmp_path_factory.mktemp("outage-stack"), name="outage") as ps:
        yield ps


@pytest.fixture
def api(outage_stack: ProxiedStack) -> Iterator[Api]:
    """A client of the outage stack's gateway."""
    # Restore before each test, so that one failed test does not take the next one down.
    outage_stack.pg.restore()
    outage_stack.amqp.restore()
    with Api(outage_stack.gateway, timeout=30) as client:
        yield client


def _poll(predicate, *, within: float, what: str, interval: float = 0.25):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    last = None
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


class TestDatabaseOutage:
    """PostgreSQL unreachable: not ready, fast 503s, and back by itself."""

    def test_requests_fail_fast_and_recover_without_restarts(
        self, outage_stack: ProxiedStack, api: Api
    ) -> None:
        ps = outage_stack
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
            _all_alive(ps)
        finally:
            ps.pg.restore()

        _poll(
            lambda: _readyz(ps, "projects").status_code == 200,
            within=30,
            what="projects ready again",
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

    def test_every_service_reports_not_ready_while_the_database_is_down(
        self, outage_stack: ProxiedStack, api: Api
    ) -> None:
        ps = outage_stack
        ps.pg.cut()
        try:
            for name in ("gateway", "projects", "staging", "billing"):
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


class TestBrokerOutage:
    """RabbitMQ unreachable: images are still accepted, and staged once it is back."""

    def test_images_created_during_the_outage_reach_ready(
        self, outage_stack: ProxiedStack, api: Api
    ) -> None:
        ps = outage_stack
        pids = _pids(ps)
        auth = api.sign_in()
        project_id = api.project(auth, "Broker outage")
        keys = [api.upload_key(auth, jpeg(480, 320, seed=i)) for i in range(5)]

        ps.amqp.cut()
        try:
            _poll(
                lambda: _readyz(ps, "projects").status_code == 503,
                within=15,
                what="projects /readyz 503 without the broker",
            )
            image_ids = []
            for i, key in enumerate(keys):
                started = time.monotonic()
                resp = api.create_image(auth, project_id, key, seed=i)
                assert time.monotonic() - started < FAIL_FAST_SECONDS
                assert resp.status_code == 201, resp.text
                image_ids.append(resp.json()["id"])
            pending = asyncio.run(
                fetch(
                    ps.dsn("projects"),
                    "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL "
                    "AND routing_key = 'image.queued'",
                )
            )
            assert pending[0]["n"] >= len(image_ids), "the outbox holds the events"
            # While the broker is away nothing can move: the images wait, queued.
            hold_until = time.monotonic() + 3
            while time.monotonic() < hold_until:
                statuses = {api.image(auth, i)["status"] for i in image_ids}
                assert statuses == {"queued"}, statuses
                time.sleep(0.5)
            _all_alive(ps)
        finally:
            ps.amqp.restore()

        settled = api.wait_settled(auth, image_ids, within=120)
        assert {b["status"] for b in settled.values()} == {"ready"}, settled
        left = asyncio.run(
            fetch(ps.dsn("projects"), "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL")
        )
        assert left[0]["n"] == 0
        assert all(n == 0 for n in asyncio.run(dead_letter_counts(ps.amqp_url)).values())
        assert _pids(ps) == pids, "no service was restarted"

    def test_a_broker_blip_mid_flight_loses_nothing(
        self, outage_stack: ProxiedStack, api: Api
    ) -> None:
        ps = outage_stack
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
        assert all(n == 0 for n in asyncio.run(dead_letter_counts(ps.amqp_url)).values())
