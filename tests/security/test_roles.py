"""A demoted admin: roles follow the source (the Auth0 roles claim or `GATEWAY_ADMIN_SUBS`).

Each test signs in against the running stack the way a real person would, changes the source
(a token without the roles claim, a gateway restarted with a shorter admin list) and checks
that the very next request is refused and that the change is in the audit log.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.services import SERVICES, Stack
from gateway.devissuer import DevIssuer
from servicekit.testing import InfraUrls, pinned_environment, private_vhost
from tests.support.stackkit import free_port

pytestmark = pytest.mark.e2e

KEEPER = "dev|keeper"
BOSS = "dev|boss"
ADMIN_ROUTES = ("/v1/admin/users", "/v1/admin/staging/jobs")


@pytest.fixture(scope="module")
def stack(infra: InfraUrls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The four services, with two people on the gateway's admin list."""
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
            db_prefix=f"rs_roles_{uuid.uuid4().hex[:8]}",
            drop_databases_on_exit=True,
            state_dir=tmp_path_factory.mktemp("roles"),
            extra_env={"GATEWAY_ADMIN_SUBS": f"{BOSS},{KEEPER}"},
            timeout=120,
        ) as running,
    ):
        yield running


@pytest.fixture(scope="module")
def issuer(stack: Stack) -> DevIssuer:
    """The gateway's development issuer, which can also put a roles claim in a token."""
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


def bearer(issuer: DevIssuer, sub: str, *, admin: bool = False) -> dict[str, str]:
    """Headers with a token for `sub`, with the admin roles claim or without any."""
    return {"Authorization": f"Bearer {issuer.mint(sub, role='admin' if admin else None)}"}


def me(client: httpx.Client, headers: dict[str, str]) -> dict[str, Any]:
    """The caller as the gateway sees them."""
    resp = client.get("/v1/me", headers=headers)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def role_changes(client: httpx.Client, auditor: dict[str, str], user_id: str) -> list[Any]:
    """The audit log of a user's roles, newest first."""
    resp = client.get(f"/v1/admin/users/{user_id}/role-changes", headers=auditor)
    assert resp.status_code == 200, resp.text
    changes: list[Any] = resp.json()
    return changes


class TestRolesFollowTheSource:
    """Removing the role at the source takes effect at the next request, and is audited."""

    def test_a_token_without_the_roles_claim_is_refused_on_admin_routes(
        self, client: httpx.Client, issuer: DevIssuer
    ) -> None:
        sub = f"dev|claimed-{uuid.uuid4().hex[:8]}"
        as_admin = bearer(issuer, sub, admin=True)
        for path in ADMIN_ROUTES:
            assert client.get(path, headers=as_admin).status_code == 200, path

        demoted = bearer(issuer, sub)
        for path in ADMIN_ROUTES:
            resp = client.get(path, headers=demoted)
            assert resp.status_code == 403, (path, resp.text)
        user = me(client, demoted)
        assert user["role"] == "user"

        auditor = bearer(issuer, f"dev|auditor-{uuid.uuid4().hex[:8]}", admin=True)
        changes = role_changes(client, auditor, user["id"])
        assert [(c["old_role"], c["new_role"], c["source"], c["actor"]) for c in changes] == [
            ("admin", "user", "sign-in", sub),
            (None, "admin", "sign-in", sub),
        ]

    def test_removal_from_the_admin_list_demotes_at_the_next_request(
        self, stack: Stack, client: httpx.Client, issuer: DevIssuer
    ) -> None:
        boss = bearer(issuer, BOSS)
        boss_id = me(client, boss)["id"]
        assert client.get("/v1/admin/users", headers=boss).status_code == 200

        gateway = stack.process("gateway")
        gateway.env["GATEWAY_ADMIN_SUBS"] = KEEPER
        gateway.restart()
        gateway.wait_ready(60)

        for path in ADMIN_ROUTES:
            resp = client.get(path, headers=boss)
            assert resp.status_code == 403, (path, resp.text)
        latest = role_changes(client, bearer(issuer, KEEPER), boss_id)[0]
        assert (latest["old_role"], latest["new_role"], latest["source"]) == (
            "admin",
            "user",
            "sign-in",
        )
        assert latest["actor"] == BOSS

    def test_a_manual_grant_is_audited_and_the_next_sign_in_applies_the_source(
        self, stack: Stack, client: httpx.Client, issuer: DevIssuer
    ) -> None:
        sub = f"dev|granted-{uuid.uuid4().hex[:8]}"
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "set-role", "--sub", sub, "--role", "admin"],
            env=stack.env("gateway"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr

        person = bearer(issuer, sub)
        assert client.get("/v1/admin/users", headers=person).status_code == 403
        user_id = me(client, person)["id"]
        changes = role_changes(client, bearer(issuer, KEEPER), user_id)
        assert [(c["old_role"], c["new_role"], c["source"]) for c in changes] == [
            ("admin", "user", "sign-in"),
            (None, "admin", "cli"),
        ]
        assert changes[1]["actor"]

    def test_role_changes_through_the_admin_api_are_audited_and_admin_only(
        self, client: httpx.Client, issuer: DevIssuer
    ) -> None:
        admin = bearer(issuer, f"dev|admin-{uuid.uuid4().hex[:8]}", admin=True)
        admin_id = me(client, admin)["id"]
        target = bearer(issuer, f"dev|target-{uuid.uuid4().hex[:8]}")
        target_id = me(client, target)["id"]

        own_audit = client.get(f"/v1/admin/users/{target_id}/role-changes", headers=target)
        assert own_audit.status_code == 403
        resp = client.patch(f"/v1/admin/users/{target_id}", json={"role": "admin"}, headers=admin)
        assert resp.status_code == 200, resp.text
        again = client.patch(f"/v1/admin/users/{target_id}", json={"role": "admin"}, headers=admin)
        assert again.status_code == 200, again.text

        changes = role_changes(client, admin, target_id)
        assert [(c["old_role"], c["new_role"], c["source"], c["actor"]) for c in changes] == [
            ("user", "admin", "admin-api", admin_id)
        ]
        missing = client.get(f"/v1/admin/users/{uuid.uuid4()}/role-changes", headers=admin)
        assert missing.status_code == 404
