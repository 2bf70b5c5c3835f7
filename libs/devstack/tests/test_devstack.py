"""devstack against the machine's real PostgreSQL, RabbitMQ and SeaweedFS."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from minio import Minio
from minio.error import S3Error

from devstack import (
    DEFAULT_PORTS,
    SERVICES,
    Infra,
    PortInUseError,
    ServiceError,
    ServiceProcess,
    drop_database,
    ensure_database,
    ensure_infra,
    migrate,
    service_env,
)
from devstack.infra import database_exists, port_open


@pytest.fixture(scope="module")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    """The infrastructure, started for this module only if nothing was already running."""
    first, cleanups = ensure_infra(tmp_path_factory.mktemp("state"))
    yield first
    for cleanup in reversed(cleanups):
        cleanup()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_ensure_infra_is_idempotent(infra: Infra, tmp_path: Path) -> None:
    started = time.monotonic()
    again, cleanups = ensure_infra(tmp_path)
    elapsed = time.monotonic() - started

    assert again == infra
    assert cleanups == [], "a second call must reuse what is running, not start anything"
    assert elapsed < 10
    assert port_open(5432)
    assert port_open(5672)
    assert again.pg_base_url.startswith("postgresql+asyncpg://")
    assert again.amqp_url.startswith("amqp://")


def test_database_can_be_created_and_dropped(infra: Infra) -> None:
    name = f"rs_test_{uuid.uuid4().hex[:12]}_devstack"
    try:
        url = ensure_database(name, infra.pg_base_url)
        assert url == f"{infra.pg_base_url}/{name}"
        assert database_exists(name, infra.pg_base_url)
        ensure_database(name, infra.pg_base_url)
    finally:
        drop_database(name, infra.pg_base_url)
    assert not database_exists(name, infra.pg_base_url)


def test_unsafe_database_name_is_refused(infra: Infra) -> None:
    with pytest.raises(ValueError, match="unsafe"):
        ensure_database('x"; DROP DATABASE postgres; --', infra.pg_base_url)


def test_s3_answers_and_a_bucket_can_be_created(infra: Infra) -> None:
    host = infra.s3_endpoint.removeprefix("http://")
    client = Minio(
        host,
        access_key=infra.s3_access_key,
        secret_key=infra.s3_secret_key,
        secure=False,
        region="us-east-1",
    )
    bucket = f"devstack-test-{uuid.uuid4().hex[:12]}"
    client.make_bucket(bucket)
    try:
        assert client.bucket_exists(bucket)
    finally:
        client.remove_bucket(bucket)
    assert not client.bucket_exists(bucket)


def test_s3_refuses_a_wrong_secret(infra: Infra) -> None:
    host = infra.s3_endpoint.removeprefix("http://")
    client = Minio(host, access_key=infra.s3_access_key, secret_key="wrong", secure=False)
    with pytest.raises(S3Error, match=r"(?i)signature|denied|forbidden"):
        client.list_buckets()


def test_service_env_has_shared_and_prefixed_names(tmp_path: Path) -> None:
    infra = Infra(
        pg_base_url="postgresql+asyncpg://u:p@127.0.0.1:5432",
        amqp_url="amqp://guest:guest@127.0.0.1:5672/",
        s3_endpoint="http://127.0.0.1:9000",
        s3_access_key="ak",
        s3_secret_key="sk",
    )
    secret = "s" * 40
    envs = {
        name: service_env(
            infra,
            name,
            db_name=f"realstaging_{name}",
            ports=DEFAULT_PORTS,
            internal_secret=secret,
            state_dir=tmp_path,
            extra={"EXTRA_SETTING": "1"},
        )
        for name in SERVICES
    }
    for name, env in envs.items():
        prefix = name.upper()
        assert env["ENVIRONMENT"] == "development"
        assert env["AMQP_URL"] == infra.amqp_url
        assert env["INTERNAL_SECRET"] == secret
        assert env["S3_ENDPOINT"] == env["S3_PUBLIC_ENDPOINT"] == "http://127.0.0.1:9000"
        assert (env["S3_ACCESS_KEY"], env["S3_SECRET_KEY"], env["S3_BUCKET"]) == (
            "ak",
            "sk",
            "realstaging",
        )
        assert env["LOG_LEVEL"] == "INFO"
        assert env[f"{prefix}_DATABASE_URL"] == f"{infra.pg_base_url}/realstaging_{name}"
        assert env[f"{prefix}_HOST"] == "127.0.0.1"
        assert env[f"{prefix}_PORT"] == str(DEFAULT_PORTS[name])
        assert env["EXTRA_SETTING"] == "1"
    gateway = envs["gateway"]
    assert gateway["GATEWAY_PORT"] == "8000"
    assert gateway["GATEWAY_PROJECTS_URL"] == "http://127.0.0.1:8001"
    assert gateway["GATEWAY_STAGING_URL"] == "http://127.0.0.1:8002"
    assert gateway["GATEWAY_BILLING_URL"] == "http://127.0.0.1:8003"
    assert gateway["GATEWAY_PUBLIC_URL"] == "http://127.0.0.1:8000"
    assert gateway["GATEWAY_DEV_KEY_PATH"] == str(tmp_path / "dev-issuer-key.pem")
    assert "GATEWAY_PROJECTS_URL" not in envs["projects"]
    with pytest.raises(ValueError, match="32"):
        service_env(
            infra,
            "gateway",
            db_name="x",
            ports=DEFAULT_PORTS,
            internal_secret="short",
            state_dir=tmp_path,
        )


DUMMY_SERVICE = """
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

if sys.argv[1:] == ["migrate"]:
    if os.environ.get("DUMMY_MIGRATE_FAILS"):
        print("alembic: cannot reach the database", file=sys.stderr)
        sys.exit(3)
    print("migrated")
    sys.exit(0)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        status = 200 if self.path in ("/healthz", "/readyz") else 404
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"ok")


print("dummy service listening", flush=True)
HTTPServer(("127.0.0.1", int(os.environ["DUMMYSVC_PORT"])), Handler).serve_forever()
"""


@pytest.fixture
def dummy_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose PYTHONPATH holds a tiny `dummysvc` package with /healthz and /readyz."""
    package = tmp_path / "pkgs" / "dummysvc"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(textwrap.dedent(DUMMY_SERVICE))
    return {"PYTHONPATH": str(tmp_path / "pkgs"), "DUMMYSVC_PORT": str(_free_port())}


def test_service_process_lifecycle(dummy_env: dict[str, str], tmp_path: Path) -> None:
    port = int(dummy_env["DUMMYSVC_PORT"])
    log_path = tmp_path / "logs" / "dummysvc.log"
    process = ServiceProcess("dummysvc", dummy_env, port=port, log_path=log_path)
    process.start()
    try:
        process.wait_healthy(timeout=15)
        process.wait_ready(timeout=15)
        assert httpx.get(f"{process.url}/healthz").status_code == 200
        with pytest.raises(PortInUseError):
            ServiceProcess("dummysvc", dummy_env, port=port).start()

        first_pid = process.pid
        process.kill()
        assert process.returncode == -9
        assert not process.running

        process.restart()
        process.wait_healthy(timeout=15)
        assert process.pid != first_pid
        assert log_path.read_text().count("dummy service listening") == 2
    finally:
        assert process.stop(timeout=5)
    assert not port_open(port)
    assert not process.stop()


def test_wait_healthy_reports_an_early_exit_with_the_log(tmp_path: Path) -> None:
    package = tmp_path / "pkgs" / "crashsvc"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text("raise SystemExit('bad settings: INTERNAL_SECRET')\n")
    env = {"PYTHONPATH": str(tmp_path / "pkgs")}
    process = ServiceProcess("crashsvc", env, port=_free_port(), log_path=tmp_path / "crash.log")
    process.start()
    with pytest.raises(ServiceError, match="bad settings"):
        process.wait_healthy(timeout=15)


def test_migrate_raises_with_output(dummy_env: dict[str, str]) -> None:
    migrate("dummysvc", dummy_env)
    with pytest.raises(ServiceError, match="cannot reach the database"):
        migrate("dummysvc", {**dummy_env, "DUMMY_MIGRATE_FAILS": "1"})


def test_cli_infra_prints_exports(infra: Infra, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devstack", "--state-dir", str(tmp_path), "infra"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert lines == [
        f"export TEST_PG_URL={infra.pg_base_url}",
        f"export TEST_AMQP_URL={infra.amqp_url}",
        f"export TEST_S3_ENDPOINT={infra.s3_endpoint}",
        f"export TEST_S3_ACCESS_KEY={infra.s3_access_key}",
        f"export TEST_S3_SECRET_KEY={infra.s3_secret_key}",
    ]
