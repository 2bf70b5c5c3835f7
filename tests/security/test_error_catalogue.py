"""What an owner reads when staging fails: a sentence from the catalogue, never internals.

End to end, every service its own process; staging runs the Replicate backend against a fake
Replicate in this test (safety refusals, or an output on a host off the allow-list) and reads
at most 150 kB of an original. A too-large original, a damaged photo, a model's refusal and an
off-list output each end in `error` with a catalogue sentence and no exception text, object key
or setting name, while the admin job view holds the technical detail.
"""

from __future__ import annotations

import io
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from contracts.reasons import CATALOGUE, FailureReason
from devstack.services import SERVICES, Stack
from servicekit.testing import InfraUrls, pinned_environment, private_vhost
from tests.support.stackkit import Api, free_port, jpeg

pytestmark = pytest.mark.e2e

ADMIN_SUB = "dev|catalogue-admin"
MAX_INPUT_BYTES = 150_000
OFF_LIST_SEED = 4242
"""A photo staged with this seed gets an output URL on a host off the allow-list."""
LEAKS = ("Error", "Exception", "uploads/", "originals/", "STAGING_", "bytes", "Traceback", "http")


class FakeReplicate:
    """Every prediction fails its safety filter, except the off-list seed's, which succeeds."""

    def __init__(self) -> None:
        self.seeds: dict[str, Any] = {}

    def app(self) -> Starlette:
        async def create(request: Request) -> Response:
            body = await request.json()
            pid = uuid.uuid4().hex[:20]
            self.seeds[pid] = body.get("input", {}).get("seed")
            return JSONResponse({"id": pid, "status": "starting"}, status_code=201)

        async def get(request: Request) -> Response:
            pid = request.path_params["pid"]
            if self.seeds.get(pid) == OFF_LIST_SEED:
                output = ["http://localhost:9/stolen.webp"]
                return JSONResponse({"id": pid, "status": "succeeded", "output": output})
            return JSONResponse(
                {"id": pid, "status": "failed", "error": "NSFW content detected. Try again."}
            )

        return Starlette(
            routes=[
                Route("/v1/models/{owner}/{name}/predictions", create, methods=["POST"]),
                Route("/v1/predictions/{pid}", get, methods=["GET"]),
            ]
        )


@contextmanager
def _serve(app: Starlette) -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "the fake stopped"
        assert time.monotonic() < deadline, "the fake did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def stack(infra: InfraUrls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The four services, staging on the fake Replicate with a small input bound."""
    with (
        _serve(FakeReplicate().app()) as replicate_url,
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
            state_dir=tmp_path_factory.mktemp("catalogue"),
            extra_env={
                "GATEWAY_ADMIN_SUBS": ADMIN_SUB,
                "BILLING_LIMIT_FREE": "1000",
                "PROJECTS_DEFAULT_MONTHLY_LIMIT": "1000",
                "STAGING_BACKEND": "replicate",
                "STAGING_REPLICATE_API_TOKEN": "r8_catalogue_test",
                "STAGING_REPLICATE_API_BASE": replicate_url,
                "STAGING_REPLICATE_POLL_INITIAL_SECONDS": "0.1",
                "STAGING_REPLICATE_POLL_MAX_SECONDS": "0.2",
                "STAGING_MAX_INPUT_BYTES": str(MAX_INPUT_BYTES),
                "STAGING_REMOTE_OUTPUT_HOSTS": "127.0.0.1",
                "STAGING_REMOTE_OUTPUT_REQUIRE_HTTPS": "false",
            },
            timeout=120,
        )
        with running:
            yield running


def _large_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((900, 700), 90).convert("RGB").save(buf, "JPEG", quality=95)
    assert buf.tell() > MAX_INPUT_BYTES
    return buf.getvalue()


def _damaged_jpeg() -> bytes:
    whole = jpeg(640, 480)
    return whole[: len(whole) // 3]


def _staged(api: Api, auth: dict[str, str], project: str, data: bytes, **extra: Any) -> str:
    resp = api.create_image(auth, project, api.upload_key(auth, data), **extra)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


class TestErrorCatalogue:
    """Failures as the owner and as an admin see them."""

    def test_owners_read_catalogue_sentences_and_admins_read_the_detail(self, stack: Stack) -> None:
        with Api(stack.url("gateway")) as api:
            owner = api.sign_in()
            project = api.project(owner)
            ids = {
                "too_large": _staged(api, owner, project, _large_jpeg()),
                "damaged": _staged(api, owner, project, _damaged_jpeg()),
                "refused": _staged(api, owner, project, jpeg(640, 480)),
                "off_list": _staged(api, owner, project, jpeg(640, 480), seed=OFF_LIST_SEED),
            }
            settled = api.wait_settled(owner, ids.values(), within=120)
            expected = {
                "too_large": FailureReason.PHOTO_TOO_LARGE,
                "damaged": FailureReason.DAMAGED_PHOTO,
                "refused": FailureReason.MODEL_REFUSED_SAFETY,
                "off_list": FailureReason.INTERNAL,
            }
            for case, image_id in ids.items():
                image = settled[image_id]
                assert (image["status"], image["error"]) == ("error", expected[case].value), case
                assert image["error"] in CATALOGUE
                assert not any(leak in image["error"] for leak in LEAKS), image["error"]

            admin = api.sign_in(ADMIN_SUB)
            resp = api.client.get(
                "/v1/admin/staging/jobs", params={"status": "failed", "limit": 200}, headers=admin
            )
            assert resp.status_code == 200, resp.text
            jobs = {job["image_id"]: job for job in resp.json()["items"]}
            details = {case: jobs[image_id]["detail"] or "" for case, image_id in ids.items()}
            assert f"larger than {MAX_INPUT_BYTES} bytes" in details["too_large"]
            assert "truncated" in details["damaged"] or "damaged" in details["damaged"]
            assert "NSFW" in details["refused"]
            assert "localhost" in details["off_list"]
            assert "allow-list" in details["off_list"]
            for case, image_id in ids.items():
                assert jobs[image_id]["error"] == expected[case].value, case
        # The refused output is logged with its detail for whoever runs the service.
        logs = "".join(p.read_text(errors="replace") for p in Path(stack.log_dir).glob("staging*"))
        assert "refusing a remote output" in logs
        assert "localhost" in logs
