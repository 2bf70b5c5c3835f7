"""Two gateway bugs turned into attempts: odd digits in `Last-Event-ID`, forged admin cursors.

Neither may reach a 500: a resume position the gateway cannot read is a fresh start, and a
cursor it did not make is a 400.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.services import SERVICES, Stack
from gateway.devissuer import DevIssuer
from servicekit.testing import InfraUrls, pinned_environment, private_vhost
from tests.support.stackkit import free_port, is_envelope

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(infra: InfraUrls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The four services on real infrastructure."""
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
            db_prefix=f"rs_bugs_{uuid.uuid4().hex[:8]}",
            drop_databases_on_exit=True,
            state_dir=tmp_path_factory.mktemp("bugs"),
            timeout=120,
        ) as running,
    ):
        yield running


@pytest.fixture(scope="module")
def issuer(stack: Stack) -> DevIssuer:
    """The gateway's development issuer (it can mint an admin's token)."""
    env = stack.env("gateway")
    return DevIssuer.from_path(
        Path(env["GATEWAY_DEV_KEY_PATH"]),
        issuer=env["GATEWAY_PUBLIC_URL"] + "/",
        audience="https://api.realstaging.local",
    )


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    """A client of the gateway's public port."""
    with httpx.Client(base_url=stack.url("gateway"), timeout=30) as c:
        yield c


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


class TestLastEventId:
    """A resume position in digits other than ASCII ones is a fresh start, never a 500."""

    @pytest.mark.parametrize(
        "last_event_id",
        [
            # Header bytes are read as Latin-1: b"\xb2" is '²', which str.isdigit() accepts
            # and int() refuses.
            b"\xb2",
            b"\xb3\xb9",
            "\u0663".encode(),  # Arabic-Indic three, as UTF-8
            "\uff11\uff12".encode(),  # fullwidth twelve, as UTF-8
            b"99999999999999999999999",  # beyond bigint
            b"-1",
            b"1e3",
        ],
    )
    def test_an_unreadable_last_event_id_starts_a_fresh_stream(
        self, client: httpx.Client, issuer: DevIssuer, last_event_id: bytes
    ) -> None:
        token = issuer.mint(f"dev|sse-{uuid.uuid4().hex[:8]}")
        headers = {b"Authorization": f"Bearer {token}".encode(), b"Last-Event-ID": last_event_id}
        with client.stream("GET", "/v1/events", headers=headers, timeout=15) as resp:
            assert resp.status_code == 200, resp.read()
            for line in resp.iter_lines():
                if line.startswith("event:"):
                    assert line == "event: snapshot"
                    break

    def test_a_query_position_beyond_bigint_is_refused_as_input(
        self, client: httpx.Client, issuer: DevIssuer
    ) -> None:
        headers = {"Authorization": f"Bearer {issuer.mint('dev|sse-query')}"}
        resp = client.get("/v1/events", params={"last_event_id": "9" * 25}, headers=headers)
        assert resp.status_code == 422, resp.text


class TestAdminUserCursor:
    """Cursors the gateway did not hand out are a 400 with the error envelope."""

    @pytest.mark.parametrize(
        "cursor",
        [
            "%%%",
            _b64(f"2026-01-01T00:00:00|{uuid.uuid4()}"),  # no time zone
            _b64(f"0001-01-01T00:00:00+14:00|{uuid.uuid4()}"),  # before year 1 in UTC
            _b64("2026-01-01T00:00:00+00:00|not-a-uuid"),
            _b64("no separator"),
            base64.urlsafe_b64encode(b"\xff\xfe\xfd|x").decode(),
        ],
    )
    def test_a_forged_cursor_is_a_bad_request(
        self, client: httpx.Client, issuer: DevIssuer, cursor: str
    ) -> None:
        admin = {"Authorization": f"Bearer {issuer.mint('dev|cursor-admin', role='admin')}"}
        resp = client.get("/v1/admin/users", params={"cursor": cursor}, headers=admin)
        assert resp.status_code == 400, resp.text
        body = resp.json()
        assert is_envelope(body), body
        assert body["error"] == "invalid_cursor"

    def test_the_cursor_handed_out_still_pages(
        self, client: httpx.Client, issuer: DevIssuer
    ) -> None:
        for n in range(3):
            client.get("/v1/me", headers={"Authorization": f"Bearer {issuer.mint(f'dev|p{n}')}"})
        admin = {"Authorization": f"Bearer {issuer.mint('dev|cursor-admin', role='admin')}"}
        first = client.get("/v1/admin/users", params={"limit": 2}, headers=admin).json()
        assert first["next_cursor"]
        second = client.get(
            "/v1/admin/users", params={"limit": 2, "cursor": first["next_cursor"]}, headers=admin
        )
        assert second.status_code == 200, second.text
        assert {u["id"] for u in first["items"]}.isdisjoint(u["id"] for u in second.json()["items"])
