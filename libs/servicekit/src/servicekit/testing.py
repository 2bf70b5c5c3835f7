"""Pytest fixtures for tests that talk to real PostgreSQL, RabbitMQ and S3.

URLs come from the environment first (`TEST_PG_URL`, `TEST_AMQP_URL`, `TEST_S3_ENDPOINT`,
`TEST_S3_ACCESS_KEY`, `TEST_S3_SECRET_KEY`; `make test` sets them), then from testcontainers when
a Docker engine answers. Otherwise the test fails with a message saying how to provide them:
a missing service is never a silent skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aio_pika.exceptions
import asyncpg
import pytest
from alembic import command
from fastapi import FastAPI

from contracts.enums import Role
from contracts.identity import HEADER, Identity
from contracts.topology import ALL_QUEUES
from servicekit.cli import alembic_config
from servicekit.identity import sign_identity
from servicekit.messaging import DECLARED_DELAYS, RetryPolicy
from servicekit.settings import ServiceSettings

TEST_INTERNAL_SECRET = "test-internal-secret-0123456789-abcdefghijklmnop"


@dataclass(frozen=True)
class InfraUrls:
    """Where the test run's backing services are."""

    pg_base_url: str
    amqp_url: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str


def _from_containers(stack: contextlib.ExitStack) -> InfraUrls | None:
    try:
        from testcontainers.minio import MinioContainer
        from testcontainers.postgres import PostgresContainer
        from testcontainers.rabbitmq import RabbitMqContainer
    except ImportError:
        return None
    try:
        pg = stack.enter_context(PostgresContainer("postgres:15", driver="asyncpg"))
        mq = stack.enter_context(RabbitMqContainer("rabbitmq:3.13-management"))
        s3 = stack.enter_context(MinioContainer())
    except Exception:
        # No Docker engine answers: the constructor fails at once.
        return None
    pg_url = pg.get_connection_url().rsplit("/", 1)[0]
    mq_params = mq.get_connection_params()
    s3_conf = s3.get_config()
    return InfraUrls(
        pg_base_url=pg_url,
        amqp_url=f"amqp://guest:guest@{mq_params.host}:{mq_params.port}/",
        s3_endpoint=f"http://{s3_conf['endpoint']}",
        s3_access_key=s3_conf["access_key"],
        s3_secret_key=s3_conf["secret_key"],
    )


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextlib.contextmanager
def private_vhost(amqp_url: str) -> Iterator[str]:
    """A throwaway RabbitMQ virtual host, so this run's consumers never take another's messages.

    Queue names are fixed by the topology, so a test run sharing a vhost with a running stack
    (or another test run) would compete with it for the same queues.
    """
    if shutil.which("rabbitmqctl") is None:
        yield amqp_url
        return
    vhost = f"rs-test-{uuid.uuid4().hex[:10]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        user = urlsplit(amqp_url).username or "guest"
        _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        parts = urlsplit(amqp_url)
        yield parts._replace(path=f"/{vhost}").geturl()
    finally:
        with contextlib.suppress(Exception):
            _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def infra() -> Iterator[InfraUrls]:
    """The PostgreSQL, RabbitMQ (a private vhost) and S3 this test run uses."""
    env = os.environ
    if env.get("TEST_PG_URL") and env.get("TEST_AMQP_URL") and env.get("TEST_S3_ENDPOINT"):
        with private_vhost(env["TEST_AMQP_URL"]) as amqp_url:
            yield InfraUrls(
                pg_base_url=env["TEST_PG_URL"].rstrip("/"),
                amqp_url=amqp_url,
                s3_endpoint=env["TEST_S3_ENDPOINT"],
                s3_access_key=env.get("TEST_S3_ACCESS_KEY", "realstaging"),
                s3_secret_key=env.get("TEST_S3_SECRET_KEY", "realstaging-secret"),
            )
        return
    with contextlib.ExitStack() as stack:
        urls = _from_containers(stack)
        if urls is None:
            pytest.fail(
                "No PostgreSQL/RabbitMQ/S3 for the tests: set TEST_PG_URL, TEST_AMQP_URL and "
                "TEST_S3_ENDPOINT (`make test` does), or run a Docker engine for testcontainers."
            )
        yield urls


def _known_delays() -> set[int]:
    """Delays whose queues may hold messages: the defaults, the environment's, this process's."""
    delays = set(RetryPolicy().delays_ms) | DECLARED_DELAYS
    with contextlib.suppress(Exception):
        delays |= set(RetryPolicy.from_settings(ServiceSettings(environment="test")).delays_ms)
    return delays


async def purge_topology(amqp_url: str) -> None:
    """Empty every queue of the topology (and its delay and dead-letter queues)."""
    delays = sorted(_known_delays())
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        for spec in ALL_QUEUES:
            names = [spec.name, spec.dead_letter, *(spec.delay_queue(d) for d in delays)]
            for name in names:
                # A channel per queue: a missing queue closes the channel it was asked on.
                channel = await connection.channel()
                try:
                    queue = await channel.declare_queue(name, passive=True)
                    await queue.purge()
                except aio_pika.exceptions.ChannelClosed:
                    pass
                finally:
                    if not channel.is_closed:
                        await channel.close()


@pytest.fixture(autouse=True)
def _fresh_queues(request: pytest.FixtureRequest) -> None:
    """Start every test that uses the broker with empty queues.

    Queue names are fixed by the topology, so events an earlier test left behind (an outbox
    relayed after its assertions, a parked message) would otherwise reach the next test's
    consumers.
    """
    if "infra" in request.fixturenames:
        infra: InfraUrls = request.getfixturevalue("infra")
        # In a thread of its own: some tests (a browser driver) keep a loop running here.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(asyncio.run, purge_topology(infra.amqp_url)).result()


@contextlib.contextmanager
def pinned_environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _admin_dsn(pg_base_url: str) -> str:
    return pg_base_url.replace("postgresql+asyncpg://", "postgresql://") + "/postgres"


async def create_database(pg_base_url: str, name: str) -> str:
    """Create an empty database and return its SQLAlchemy URL."""
    conn = await asyncpg.connect(_admin_dsn(pg_base_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"{pg_base_url}/{name}"


async def drop_database(pg_base_url: str, name: str) -> None:
    """Drop a database, disconnecting whoever still uses it."""
    conn = await asyncpg.connect(_admin_dsn(pg_base_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def migrate(package: str, database_url: str, revision: str = "head") -> None:
    """Upgrade a database with the package's Alembic migrations (blocking)."""
    command.upgrade(alembic_config(package, database_url), revision)


def downgrade(package: str, database_url: str, revision: str = "base") -> None:
    """Downgrade a database with the package's Alembic migrations (blocking)."""
    command.downgrade(alembic_config(package, database_url), revision)


@pytest.fixture(scope="session")
async def database_factory(infra: InfraUrls) -> AsyncIterator[Callable[..., Any]]:
    """Make migrated databases for this run (`await factory("projects")`); dropped at the end."""
    created: list[str] = []

    async def make(package: str, *, migrated: bool = True) -> str:
        name = f"t_{package}_{uuid.uuid4().hex[:10]}"
        url = await create_database(infra.pg_base_url, name)
        created.append(name)
        if migrated:
            # env.py runs its own event loop, so migrate from a worker thread.
            await asyncio.to_thread(migrate, package, url)
        return url

    yield make
    for name in created:
        with contextlib.suppress(Exception):
            await drop_database(infra.pg_base_url, name)


def identity_headers(
    service: str,
    user_id: uuid.UUID | None = None,
    *,
    role: Role = Role.USER,
    secret: str = TEST_INTERNAL_SECRET,
    email: str | None = None,
) -> dict[str, str]:
    """Headers that make a request look forwarded by the gateway."""
    ident = Identity(
        user_id=user_id or uuid.uuid4(), role=role, request_id=uuid.uuid4().hex, email=email
    )
    return {HEADER: sign_identity(ident, secret=secret, audience=service)}


@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[FastAPI]:
    """Run an app's lifespan for the duration of the block."""
    async with app.router.lifespan_context(app):
        yield app


async def wait_for(
    predicate: Callable[[], Any], *, within: float = 15.0, interval: float = 0.05
) -> Any:
    """Poll `predicate` (sync or async) until it returns something truthy, or fail."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(interval)


def schema_drift(connection: Any, metadata: Any, tables: frozenset[str]) -> list[Any]:
    """What autogenerate would change to make the database match `metadata` (its `tables` only).

    Every service's models share one declarative base, so the comparison is limited to the
    tables the service owns.
    """
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    def ours(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        return type_ != "table" or name in tables

    context = MigrationContext.configure(connection, opts={"include_object": ours})
    return list(compare_metadata(context, metadata))


def owned_tables(models: Any) -> frozenset[str]:
    """The table names of the models a service's `models` module exports."""
    return frozenset(
        getattr(models, name).__tablename__
        for name in models.__all__
        if hasattr(getattr(models, name), "__tablename__")
    )


async def assert_migrations_match_models(
    package: str, database_url: str, models: Any, *, down_to: str
) -> None:
    """A migrated database has no drift from the models, also after a downgrade and upgrade."""
    from servicekit.db import create_engine

    tables = owned_tables(models)
    metadata = models.Base.metadata
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(schema_drift, metadata, tables) == []
        await engine.dispose()
        await asyncio.to_thread(downgrade, package, database_url, down_to)
        await asyncio.to_thread(migrate, package, database_url)
        async with engine.connect() as conn:
            assert await conn.run_sync(schema_drift, metadata, tables) == []
    finally:
        await engine.dispose()
