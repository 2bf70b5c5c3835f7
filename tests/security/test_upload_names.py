"""Upload keys: a file named `room..1.jpg` is the owner's; real path traversal is refused.

End to end through the gateway. Keys come from the upload endpoint; an image is then asked for
with that key, or with a key that climbs out of the caller's prefix into another user's upload.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from devstack.services import SERVICES, Stack
from servicekit.testing import InfraUrls, pinned_environment, private_vhost
from tests.support.stackkit import Api, free_port, jpeg

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(infra: InfraUrls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The four services on the test run's infrastructure."""
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
    ):
        running = Stack(
            ports={name: free_port() for name in SERVICES},
            db_prefix=f"rs_sec_{uuid.uuid4().hex[:8]}",
            drop_databases_on_exit=True,
            state_dir=tmp_path_factory.mktemp("upload-names"),
            extra_env={"BILLING_LIMIT_FREE": "1000", "PROJECTS_DEFAULT_MONTHLY_LIMIT": "1000"},
            timeout=120,
        )
        with running:
            yield running


@pytest.fixture
def api(stack: Stack) -> Iterator[Api]:
    """A client of the gateway."""
    with Api(stack.url("gateway")) as client:
        yield client


def _uploaded(api: Api, auth: dict[str, str], filename: str) -> str:
    resp = api.upload(auth, jpeg(320, 240), filename=filename)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["key"])


class TestUploadNames:
    """Which keys an owner may stage."""

    @pytest.mark.parametrize("filename", ["room..1.jpg", "living...room.jpg", "..hidden.jpg"])
    def test_dots_in_a_file_name_are_the_owners_own_upload(self, api: Api, filename: str) -> None:
        owner = api.sign_in()
        key = _uploaded(api, owner, filename)
        resp = api.create_image(owner, api.project(owner), key)
        assert resp.status_code == 201, resp.text
        assert api.wait_settled(owner, [resp.json()["id"]])[resp.json()["id"]]["status"] == "ready"

    def test_the_room_dot_dot_name_is_kept_recognisable(self, api: Api) -> None:
        owner = api.sign_in()
        assert _uploaded(api, owner, "room..1.jpg").endswith("-room..1.jpg")

    def test_traversal_into_another_users_upload_is_refused(self, api: Api) -> None:
        victim = api.sign_in()
        victims_key = _uploaded(api, victim, "private.jpg")
        _, victim_id, victim_name = victims_key.split("/")
        attacker = api.sign_in()
        attacker_id = _uploaded(api, attacker, "mine.jpg").split("/")[1]
        project = api.project(attacker)
        attempts = [
            f"uploads/{attacker_id}/../{victim_id}/{victim_name}",
            f"uploads/{attacker_id}/./../{victim_id}/{victim_name}",
            f"uploads/{attacker_id}/..\\{victim_id}\\{victim_name}",
            f"uploads/{attacker_id}//../{victim_id}/{victim_name}",
            f"/uploads/{attacker_id}/../{victim_id}/{victim_name}",
            f"uploads/{attacker_id}/..",
            victims_key,
        ]
        for key in attempts:
            resp = api.create_image(attacker, project, key)
            assert resp.status_code == 422, (key, resp.status_code, resp.text)
            assert resp.json()["error"] == "invalid_upload", key
            assert "does not belong to you" in resp.json()["message"], key
