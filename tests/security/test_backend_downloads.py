"""A remote backend's output URL cannot send our API token elsewhere or fetch from anywhere.

Exploit attempts against the Replicate backend as the worker runs it, over real HTTP: a fake
Replicate on 127.0.0.1 (its API and its file host) and an attacker's server on `localhost`
(another host name, so off the allow-list), both recording every request's headers. The output
URL is scripted per test: another host, plain http where https is required, and a redirect off
the list. Each is refused with a catalogue reason before anything reaches the other host, and
no output download carries the token.
"""

from __future__ import annotations

import io
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from contracts.enums import RoomType, Style
from contracts.reasons import CATALOGUE, FailureReason
from servicekit.messaging import PermanentError
from staging.backends.base import StageRequest
from staging.backends.remote import RefusedOutput, RemoteLimits
from staging.backends.replicate import ReplicateBackend, ReplicateConfig

TOKEN = "r8_security_test_token"


def _webp() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 180, 160)).save(buf, "WEBP")
    return buf.getvalue()


@dataclass
class Recorder:
    """Every request a server saw: its path and its Authorization header."""

    seen: list[tuple[str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, request: Request) -> None:
        with self.lock:
            self.seen.append((request.url.path, request.headers.get("authorization")))

    def paths(self, prefix: str = "/") -> list[str]:
        with self.lock:
            return [p for p, _ in self.seen if p.startswith(prefix)]

    def tokens(self, prefix: str = "/") -> list[str | None]:
        with self.lock:
            return [a for p, a in self.seen if p.startswith(prefix)]


@dataclass
class FakeReplicate:
    """Predictions that succeed at once with a scripted output URL; files and redirects."""

    recorder: Recorder = field(default_factory=Recorder)
    output: str = ""
    redirect_to: str = ""
    base_url: str = ""

    def app(self) -> Starlette:
        async def create(request: Request) -> Response:
            self.recorder.record(request)
            return JSONResponse({"id": uuid.uuid4().hex[:20], "status": "starting"}, 201)

        async def get(request: Request) -> Response:
            self.recorder.record(request)
            pid = request.path_params["pid"]
            return JSONResponse({"id": pid, "status": "succeeded", "output": [self.output]})

        async def file(request: Request) -> Response:
            self.recorder.record(request)
            return Response(_webp(), media_type="image/webp")

        async def redirect(request: Request) -> Response:
            self.recorder.record(request)
            return RedirectResponse(self.redirect_to, status_code=302)

        return Starlette(
            routes=[
                Route("/v1/models/{owner}/{name}/predictions", create, methods=["POST"]),
                Route("/v1/predictions/{pid}", get, methods=["GET"]),
                Route("/files/{name}", file, methods=["GET"]),
                Route("/redirect/{name}", redirect, methods=["GET"]),
            ]
        )


def _attacker_app(recorder: Recorder) -> Starlette:
    async def anything(request: Request) -> Response:
        recorder.record(request)
        return Response(_webp(), media_type="image/webp")

    return Starlette(routes=[Route("/{path:path}", anything, methods=["GET", "POST"])])


@contextmanager
def _serve(app: Starlette) -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "the server stopped"
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def replicate() -> Iterator[FakeReplicate]:
    """The fake Replicate, serving its API and its files on 127.0.0.1."""
    fake = FakeReplicate()
    with _serve(fake.app()) as port:
        fake.base_url = f"http://127.0.0.1:{port}"
        yield fake


@pytest.fixture(scope="module")
def attacker() -> Iterator[tuple[str, Recorder]]:
    """A server on another host name (`localhost`), recording whatever reaches it."""
    recorder = Recorder()
    with _serve(_attacker_app(recorder)) as port:
        yield f"http://localhost:{port}", recorder


@pytest.fixture(autouse=True)
def _fresh(replicate: FakeReplicate, attacker: tuple[str, Recorder]) -> None:
    replicate.recorder.seen.clear()
    attacker[1].seen.clear()


def _backend(replicate: FakeReplicate, *, require_https: bool = False) -> ReplicateBackend:
    return ReplicateBackend(
        ReplicateConfig(
            token=TOKEN,
            api_base=replicate.base_url,
            poll_initial_seconds=0.05,
            poll_max_seconds=0.1,
            timeout_seconds=20,
            limits=RemoteLimits(output_hosts=("127.0.0.1",), output_require_https=require_https),
        )
    )


def _request() -> StageRequest:
    return StageRequest(
        photo=Image.new("RGB", (320, 240), (210, 200, 190)),
        room_type=RoomType.LIVING_ROOM,
        style=Style.MODERN,
        seed=7,
    )


async def _refused(backend: ReplicateBackend) -> RefusedOutput:
    try:
        with pytest.raises(RefusedOutput) as refused:
            await backend.stage(_request())
    finally:
        await backend.aclose()
    # Permanent, with a sentence from the catalogue for the owner; the URL only in the detail.
    assert isinstance(refused.value, PermanentError)
    assert refused.value.reason == FailureReason.INTERNAL
    assert refused.value.reason.value in CATALOGUE
    return refused.value


class TestOutputDownloads:
    """Where the worker fetches a model's output from, and with what."""

    async def test_an_allowed_output_is_fetched_without_the_api_token(
        self, replicate: FakeReplicate
    ) -> None:
        replicate.output = f"{replicate.base_url}/files/out.webp"
        backend = _backend(replicate)
        try:
            result = await backend.stage(_request())
        finally:
            await backend.aclose()
        assert result.photo.size == (64, 48)
        assert replicate.recorder.paths("/files/") == ["/files/out.webp"]
        assert replicate.recorder.tokens("/files/") == [None]
        # The API itself did get the token: it is the one host that may.
        assert set(replicate.recorder.tokens("/v1/")) == {f"Bearer {TOKEN}"}

    async def test_an_output_on_another_host_is_refused_and_nothing_reaches_it(
        self, replicate: FakeReplicate, attacker: tuple[str, Recorder]
    ) -> None:
        url, seen = attacker
        replicate.output = f"{url}/steal.webp"
        refused = await _refused(_backend(replicate))
        assert "localhost" in str(refused)
        assert "allow-list" in str(refused)
        assert seen.seen == []

    async def test_a_plain_http_output_is_refused_when_https_is_required(
        self, replicate: FakeReplicate
    ) -> None:
        replicate.output = f"{replicate.base_url}/files/out.webp"
        refused = await _refused(_backend(replicate, require_https=True))
        assert "https" in str(refused)
        assert replicate.recorder.paths("/files/") == []

    async def test_a_redirect_off_the_allow_list_is_not_followed(
        self, replicate: FakeReplicate, attacker: tuple[str, Recorder]
    ) -> None:
        url, seen = attacker
        replicate.output = f"{replicate.base_url}/redirect/out.webp"
        replicate.redirect_to = f"{url}/steal.webp"
        refused = await _refused(_backend(replicate))
        assert "localhost" in str(refused)
        assert replicate.recorder.tokens("/redirect/") == [None]
        assert seen.seen == []

    async def test_a_redirect_within_the_allow_list_is_followed_without_the_token(
        self, replicate: FakeReplicate
    ) -> None:
        replicate.output = f"{replicate.base_url}/redirect/out.webp"
        replicate.redirect_to = f"{replicate.base_url}/files/moved.webp"
        backend = _backend(replicate)
        try:
            await backend.stage(_request())
        finally:
            await backend.aclose()
        assert replicate.recorder.paths("/redirect/") + replicate.recorder.paths("/files/") == [
            "/redirect/out.webp",
            "/files/moved.webp",
        ]
        assert replicate.recorder.tokens("/redirect/") + replicate.recorder.tokens("/files/") == [
            None,
            None,
        ]
