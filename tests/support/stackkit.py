"""Helpers for driving a whole stack from tests, the chaos run and benchmarks.

`proxied_stack()` runs the four services against the shared PostgreSQL, RabbitMQ and S3 through
`TcpProxy`s (so a test can cut them without touching the shared servers), on free ports, with
throwaway databases and a private RabbitMQ virtual host. Each service reaches its own database
through a proxy of its own, chained through the shared PostgreSQL proxy: cutting `db[service]`
takes one database away, cutting `pg` takes them all. `Api` drives the stack through the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx

from contracts.topology import ALL_QUEUES
from devstack.audit import AuditOptions, AuditReport, AuditTarget, audit
from devstack.services import SERVICES, Stack, db_names
from servicekit.testing import InfraUrls, pinned_environment, private_vhost
from tests.support.tcpproxy import TcpProxy

ENVELOPE_KEYS = {"error", "message", "details", "request_id"}
SETTLED = ("ready", "error")

SCALED_LADDER = (0.2, 0.5, 1.0, 2.0)
"""The retry ladder of the scaled time configuration (production: 1, 5, 30, 120 s)."""
SCALED_TIME: dict[str, str] = {
    "RETRY_DELAYS_SECONDS": json.dumps(list(SCALED_LADDER)),
    # Long enough that an outage of a few times the ladder is retried, never parked.
    "RETRY_MAX_AGE_SECONDS": "600",
    "RECONCILE_INTERVAL_SECONDS": "1",
    "PROJECTS_SETTLE_AFTER_SECONDS": "5",
    "PROJECTS_GIVE_UP_AFTER_SECONDS": "180",
    "PROJECTS_SWEEP_INTERVAL_SECONDS": "2",
    "PROJECTS_ORPHAN_GRACE_SECONDS": "20",
    "STAGING_JOB_LEASE_SECONDS": "6",
    "STAGING_JOB_LEASE_MARGIN_SECONDS": "2",
    "STAGING_JOB_STALE_SECONDS": "10",
    "STAGING_JOB_DEADLINE_SECONDS": "180",
    "STAGING_SWEEP_INTERVAL_SECONDS": "2",
    # Longer than an outage can hold back the commit of a result already stored.
    "STAGING_ORPHAN_GRACE_SECONDS": "20",
}
"""Every duration the self-healing machinery uses, scaled down so outage tests take seconds."""
SCALED_ORPHAN_GRACE_SECONDS = 25.0
"""What the audit grants an object without an owner on scaled time: the sweepers' grace (20 s)
and their interval (2 s), with a margin."""


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def infra_from_env() -> InfraUrls:
    """The infrastructure named by `TEST_*` (as `devstack infra` prints), else started here."""
    env = os.environ
    if env.get("TEST_PG_URL") and env.get("TEST_AMQP_URL") and env.get("TEST_S3_ENDPOINT"):
        return InfraUrls(
            pg_base_url=env["TEST_PG_URL"].rstrip("/"),
            amqp_url=env["TEST_AMQP_URL"],
            s3_endpoint=env["TEST_S3_ENDPOINT"],
            s3_access_key=env.get("TEST_S3_ACCESS_KEY", "realstaging"),
            s3_secret_key=env.get("TEST_S3_SECRET_KEY", "realstaging-secret"),
        )
    from devstack.infra import ensure_infra

    infra, _ = ensure_infra()
    return InfraUrls(
        pg_base_url=infra.pg_base_url,
        amqp_url=infra.amqp_url,
        s3_endpoint=infra.s3_endpoint,
        s3_access_key=infra.s3_access_key,
        s3_secret_key=infra.s3_secret_key,
    )


@dataclass
class ProxiedStack:
    """A running stack whose database, broker and S3 connections pass through cuttable proxies."""

    stack: Stack
    pg: TcpProxy
    """Every service's database connections pass through this one."""
    amqp: TcpProxy
    pg_base_url: str
    """The database server, reached directly (not through the proxy)."""
    amqp_url: str
    """The stack's private virtual host, reached directly (not through the proxy)."""
    s3: TcpProxy
    s3_endpoint: str
    """The S3 server, reached directly (not through the proxy)."""
    s3_access_key: str
    s3_secret_key: str
    db: dict[str, TcpProxy]
    """One proxy per service database, in front of `pg`."""

    def proxy(self, name: str) -> TcpProxy:
        """The proxy of `pg`, `amqp`, `s3` or a service's database (`projects`, `staging`...)."""
        fixed = {"pg": self.pg, "amqp": self.amqp, "s3": self.s3}
        return fixed[name] if name in fixed else self.db[name]

    def restore_all(self) -> None:
        """Forward every connection again."""
        for proxy in (self.pg, self.amqp, self.s3, *self.db.values()):
            proxy.restore()

    def audit_target(self) -> AuditTarget:
        """Where the audit reads this stack (directly, never through a proxy)."""
        base = self.pg_base_url.rstrip("/")
        return AuditTarget(
            database_urls={svc: f"{base}/{db}" for svc, db in self.stack.db_names.items()},
            amqp_url=self.amqp_url,
            s3_endpoint=self.s3_endpoint,
            s3_access_key=self.s3_access_key,
            s3_secret_key=self.s3_secret_key,
            gateway_url=self.gateway,
        )

    def audit(self, **options: Any) -> AuditReport:
        """Run the invariant audit on this stack."""
        return asyncio.run(audit(self.audit_target(), AuditOptions(**options)))

    def wait_audit_clean(self, *, within: float = 30, **options: Any) -> AuditReport:
        """Run the audit until it finds nothing (deletions settle asynchronously); else fail."""
        deadline = time.monotonic() + within
        while True:
            report = self.audit(**options)
            if report.ok or time.monotonic() > deadline:
                assert report.ok, "\n".join(report.lines())
                return report
            time.sleep(1)

    def dsn(self, service: str) -> str:
        """An asyncpg DSN of a service's database, bypassing the proxy."""
        base = self.pg_base_url.replace("postgresql+asyncpg://", "postgresql://")
        return f"{base}/{self.stack.db_names[service]}"

    @property
    def gateway(self) -> str:
        """The gateway's base URL."""
        return self.stack.url("gateway")


@contextlib.contextmanager
def proxied_stack(
    infra: InfraUrls,
    state_dir: Path,
    *,
    name: str = "proxied",
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 150,
) -> Iterator[ProxiedStack]:
    """Start a stack behind PostgreSQL, RabbitMQ and S3 proxies; stop it and drop its data after."""
    with contextlib.ExitStack() as resources:
        amqp_url = resources.enter_context(private_vhost(infra.amqp_url))
        pg = resources.enter_context(TcpProxy.for_url(infra.pg_base_url, name="postgresql"))
        amqp = resources.enter_context(TcpProxy.for_url(amqp_url, name="rabbitmq"))
        s3 = resources.enter_context(TcpProxy.for_url(infra.s3_endpoint, name="s3"))
        pg_via_proxy = pg.url(infra.pg_base_url)
        db_prefix = f"rs_{name}_{uuid.uuid4().hex[:8]}"
        names = db_names(db_prefix)
        db: dict[str, TcpProxy] = {}
        # Billing is the one source of plan limits (it announces the free plan to projects
        # when a user is created); projects' default covers the moments before that.
        env = {"BILLING_LIMIT_FREE": "100000", "PROJECTS_DEFAULT_MONTHLY_LIMIT": "100000"}
        for svc in SERVICES:
            # Chained through `pg`, so that cutting `pg` still takes every database away.
            db[svc] = resources.enter_context(TcpProxy.for_url(pg_via_proxy, name=f"{svc}-db"))
            env[f"{svc.upper()}_DATABASE_URL"] = f"{db[svc].url(pg_via_proxy)}/{names[svc]}"
        env.update(extra_env or {})
        pinned = {
            "DEVSTACK_PG_URL": pg_via_proxy,
            "DEVSTACK_AMQP_URL": amqp.url(amqp_url),
            # Presigned URLs then name the proxy's host: fine on loopback.
            "DEVSTACK_S3_ENDPOINT": s3.url(infra.s3_endpoint),
            "DEVSTACK_S3_ACCESS_KEY": infra.s3_access_key,
            "DEVSTACK_S3_SECRET_KEY": infra.s3_secret_key,
        }
        resources.enter_context(pinned_environment(pinned))
        stack = Stack(
            ports={svc: free_port() for svc in SERVICES},
            db_prefix=db_prefix,
            drop_databases_on_exit=True,
            state_dir=state_dir,
            extra_env=env,
            timeout=timeout,
        )
        proxied = ProxiedStack(
            stack=stack,
            pg=pg,
            amqp=amqp,
            pg_base_url=infra.pg_base_url,
            amqp_url=amqp_url,
            s3=s3,
            s3_endpoint=infra.s3_endpoint,
            s3_access_key=infra.s3_access_key,
            s3_secret_key=infra.s3_secret_key,
            db=db,
        )
        try:
            stack.start()
            yield proxied
        finally:
            # The databases are dropped through the proxy: it must forward for that.
            proxied.restore_all()
            stack.stop()


def jpeg(width: int = 640, height: int = 480, seed: int = 7) -> bytes:
    """An empty-room photo as JPEG bytes."""
    from staging.backends.sample_room import sample_room

    buf = io.BytesIO()
    sample_room(width, height, seed=seed).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def is_envelope(body: Any) -> bool:
    """Whether a JSON body is the common error envelope."""
    return (
        isinstance(body, dict)
        and body.keys() >= ENVELOPE_KEYS
        and isinstance(body["error"], str)
        and isinstance(body["message"], str)
        and bool(body["message"])
    )


@dataclass
class Api:
    """A thin client of the public API, for one base URL."""

    base_url: str
    timeout: float = 30
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.base_url, timeout=self.timeout)

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sign_in(self, sub: str | None = None) -> dict[str, str]:
        """Authorization headers for a (new) development user."""
        sub = sub or f"dev|user-{uuid.uuid4().hex[:10]}"
        resp = self.client.post("/v1/dev/token", json={"sub": sub})
        resp.raise_for_status()
        return {"Authorization": f"Bearer {resp.json()['access_token']}"}

    def project(self, auth: Mapping[str, str], name: str = "Test house") -> str:
        """Create a project; return its id."""
        resp = self.client.post("/v1/projects", json={"name": name}, headers=auth)
        assert resp.status_code == 201, resp.text
        return str(resp.json()["id"])

    def upload(
        self,
        auth: Mapping[str, str],
        data: bytes,
        filename: str = "room.jpg",
        content_type: str = "image/jpeg",
    ) -> httpx.Response:
        """Upload through the gateway (multipart)."""
        return self.client.post(
            "/v1/uploads", files={"file": (filename, data, content_type)}, headers=auth
        )

    def upload_key(self, auth: Mapping[str, str], data: bytes) -> str:
        """Upload a photo that must be accepted; return its key."""
        resp = self.upload(auth, data)
        assert resp.status_code == 201, resp.text
        return str(resp.json()["key"])

    def create_image(
        self,
        auth: Mapping[str, str],
        project_id: str,
        key: str,
        room_type: str = "living_room",
        style: str = "modern",
        *,
        idempotency_key: str | None = None,
        **extra: Any,
    ) -> httpx.Response:
        """Ask for a photo to be staged."""
        headers = dict(auth)
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return self.client.post(
            f"/v1/projects/{project_id}/images",
            json={"key": key, "room_type": room_type, "style": style, **extra},
            headers=headers,
        )

    def image(self, auth: Mapping[str, str], image_id: str) -> dict[str, Any]:
        """One image (must answer 200)."""
        resp = self.client.get(f"/v1/images/{image_id}", headers=auth)
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    def wait_settled(
        self, auth: Mapping[str, str], image_ids: Iterable[str], *, within: float = 90
    ) -> dict[str, dict[str, Any]]:
        """Poll until every image is `ready` or `error`; fail naming those that are not."""
        pending = set(image_ids)
        done: dict[str, dict[str, Any]] = {}
        last: dict[str, str] = {}
        deadline = time.monotonic() + within
        while pending:
            for image_id in list(pending):
                try:
                    resp = self.client.get(f"/v1/images/{image_id}", headers=auth)
                except httpx.HTTPError:
                    continue
                if resp.status_code != 200:
                    last[image_id] = f"HTTP {resp.status_code}"
                    continue
                body = resp.json()
                last[image_id] = body["status"]
                if body["status"] in SETTLED:
                    done[image_id] = body
                    pending.discard(image_id)
            if not pending:
                break
            if time.monotonic() > deadline:
                stuck = {i: last.get(i, "?") for i in pending}
                raise AssertionError(f"images not settled within {within} s: {stuck}")
            time.sleep(0.25)
        return done


async def dead_letter_counts(amqp_url: str) -> dict[str, int]:
    """Messages waiting in each consumer's dead-letter queue (passive declares)."""
    counts: dict[str, int] = {}
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        for spec in ALL_QUEUES:
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(spec.dead_letter, passive=True)
                counts[spec.dead_letter] = int(queue.declaration_result.message_count or 0)
            except aio_pika.exceptions.ChannelClosed:
                counts[spec.dead_letter] = -1
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
    return counts


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Run one query on a database (directly, not through a proxy)."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()
