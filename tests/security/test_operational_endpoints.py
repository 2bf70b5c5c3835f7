"""Operational endpoints through the gateway's public port: nothing an attacker can map.

`/metrics` is not served there (only on `GATEWAY_METRICS_PORT`), `/readyz` says ready or not
without naming a dependency, `/healthz` stays for load balancers, and `/docs` loads Swagger UI
from the gateway itself under a CSP that allows nothing else.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import ConsoleMessage, sync_playwright

from devstack.services import SERVICES, ServiceProcess, Stack
from servicekit.testing import InfraUrls, pinned_environment, private_vhost
from tests.support.stackkit import free_port, is_envelope

pytestmark = pytest.mark.e2e

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
DEPENDENCY_NAMES = ("database", "broker", "live_updates", "unavailable", "checks")


@pytest.fixture(scope="module")
def metrics_port() -> int:
    """The gateway's internal metrics port."""
    return free_port()


@pytest.fixture(scope="module")
def stack(
    infra: InfraUrls, tmp_path_factory: pytest.TempPathFactory, metrics_port: int
) -> Iterator[Stack]:
    """The four services, the gateway with its metrics on a port of their own."""
    with (
        private_vhost(infra.amqp_url) as amqp_url,
        pinned_environment(
            {
                "DEVSTACK_PG_URL": infra.pg_base_url,
                "DEVSTACK_AMQP_URL": amqp_url,
                "DEVSTACK_S3_ENDPOINT": infra.s3_endpoint,
                "DEVSTACK_S3_ACCESS_KEY": infra.s3_access_key,
                "DEVSTACK_S3_SECRET_KEY": infra.s3_secret_key,
            }
        ),
        Stack(
            ports={name: free_port() for name in SERVICES},
            db_prefix=f"rs_ops_{uuid.uuid4().hex[:8]}",
            drop_databases_on_exit=True,
            state_dir=tmp_path_factory.mktemp("ops"),
            extra_env={"GATEWAY_METRICS_PORT": str(metrics_port)},
            timeout=120,
        ) as running,
    ):
        yield running


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    """A client of the gateway's public port."""
    with httpx.Client(base_url=stack.url("gateway"), timeout=30) as c:
        yield c


class TestMetrics:
    """Prometheus metrics never leave through the public port."""

    @pytest.mark.parametrize("path", ["/metrics", "/metrics/", "/Metrics", "/v1/metrics"])
    def test_the_public_port_serves_no_metrics(self, client: httpx.Client, path: str) -> None:
        client.get("/v1/catalog")
        resp = client.get(path)
        assert resp.status_code in (401, 404), resp.text
        assert "http_requests_total" not in resp.text

    def test_the_metrics_port_serves_them(self, client: httpx.Client, metrics_port: int) -> None:
        client.get("/v1/catalog")
        resp = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
        assert resp.status_code == 200
        assert 'http_requests_total{method="GET",route="/v1/catalog"' in resp.text


class TestReadiness:
    """`/readyz` answers load balancers without telling anyone what the gateway depends on."""

    def test_ready_names_no_dependency(self, client: httpx.Client) -> None:
        resp = client.get("/readyz")
        assert resp.status_code == 200
        assert resp.json() == {"status": "ready"}
        assert client.get("/healthz").status_code == 200

    def test_not_ready_names_no_dependency(self, stack: Stack, tmp_path: Path) -> None:
        # A second gateway whose database is a port nobody listens on: a real outage.
        env = stack.env("gateway")
        port = free_port()
        env["GATEWAY_PORT"] = str(port)
        env["GATEWAY_METRICS_PORT"] = str(free_port())
        env["GATEWAY_DATABASE_URL"] = (
            f"postgresql+asyncpg://nobody:nothing@127.0.0.1:{free_port()}/none"
        )
        gateway = ServiceProcess("gateway", env, port=port, log_path=tmp_path / "gateway.log")
        gateway.start()
        try:
            gateway.wait_healthy(60)
            resp = httpx.get(f"{gateway.url}/readyz", timeout=15)
            assert resp.status_code == 503, resp.text
            body = resp.json()
            assert is_envelope(body), body
            assert body["details"] is None
            for name in DEPENDENCY_NAMES:
                assert name not in resp.text.lower(), resp.text
        finally:
            gateway.stop()


class TestDocs:
    """`/docs` runs only the gateway's own scripts."""

    def test_docs_has_a_strict_csp(self, client: httpx.Client) -> None:
        resp = client.get("/docs")
        assert resp.status_code == 200
        csp = resp.headers["content-security-policy"]
        directives: dict[str, str] = {}
        for part in csp.split(";"):
            name, _, value = part.strip().partition(" ")
            directives[name] = value
        assert directives["default-src"] == "'none'"
        assert directives["script-src"] == "'self'"
        assert "unsafe" not in csp
        assert "http" not in resp.text.split("<body>", 1)[0].lower()
        for script in ("/docs/init.js", "/docs/assets/swagger-ui-bundle.js"):
            asset = client.get(script)
            assert asset.status_code == 200, script
            assert asset.headers["content-type"].startswith("text/javascript")

    @pytest.mark.parametrize(
        "name", ["index.html", "oauth2-redirect.html", "..%2F..%2Fsettings.py"]
    )
    def test_the_bundles_demo_pages_are_not_served(self, client: httpx.Client, name: str) -> None:
        assert client.get(f"/docs/assets/{name}").status_code == 404

    def test_swagger_ui_loads_nothing_from_elsewhere(self, stack: Stack) -> None:
        executable = shutil.which("chromium") or "/usr/bin/chromium"
        if not Path(executable).exists():
            pytest.fail("Chromium is missing: `make test` installs Debian's chromium package")
        base = stack.url("gateway")
        requested: list[str] = []
        refused: list[str] = []

        def on_console(message: ConsoleMessage) -> None:
            if "Content Security Policy" in message.text or "Refused to" in message.text:
                refused.append(message.text)

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.on("request", lambda request: requested.append(request.url))
                page.on("console", on_console)
                page.goto(base + "/docs")
                page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
                page.wait_for_selector(".opblock-tag", timeout=30_000)
                title = page.inner_text(".swagger-ui .info .title")
            finally:
                browser.close()
        assert "Real Staging API" in title
        assert requested
        outside = [u for u in requested if not u.startswith((base + "/", "data:"))]
        assert outside == [], outside
        assert refused == [], refused
