"""Local HTTP servers that speak Replicate's predictions API and OpenAI's image edits API.

Each runs on 127.0.0.1 on a free port (uvicorn in a thread) and follows a script the test sets:
succeed after some polls, refuse for safety, rate-limit, fail with 5xx, never finish, answer
with broken JSON, or point at an output that does not exist. They count paid calls (creates and
edits) per input, so a test can assert "one paid call".
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

Outcome = Literal["succeed", "safety", "fail", "never", "output_404", "hold"]


def staged_photo(fmt: str = "WEBP", size: tuple[int, int] = (640, 480)) -> bytes:
    """A stand-in for a model's output: a furnished-looking block on a plain room."""
    photo = Image.new("RGB", size, (226, 220, 210))
    photo.paste((120, 90, 70), (size[0] // 4, size[1] // 2, size[0] * 3 // 4, size[1] * 5 // 6))
    buf = io.BytesIO()
    photo.save(buf, fmt)
    return buf.getvalue()


def _input_key(payload: dict[str, Any]) -> str:
    image = str(payload.get("image") or payload.get("input_image") or "")
    return hashlib.sha256(image.encode()).hexdigest()[:16]


@dataclass
class Prediction:
    """One prediction the fake holds."""

    id: str
    model: str
    input: dict[str, Any]
    outcome: Outcome
    polls_needed: int
    polls: int = 0
    status: str = "starting"
    created_at: float = field(default_factory=time.monotonic)

    def body(self, base_url: str) -> dict[str, Any]:
        """The prediction as Replicate shows it."""
        output: Any = None
        error: str | None = None
        if self.status == "succeeded":
            name = "missing" if self.outcome == "output_404" else self.id
            output = [f"{base_url}/files/{name}.webp"]
        elif self.status == "failed":
            error = (
                "NSFW content detected. Try running it again, or try a different prompt."
                if self.outcome == "safety"
                else "CUDA out of memory"
            )
        return {
            "id": self.id,
            "model": self.model,
            "version": "hidden",
            "input": {k: v for k, v in self.input.items() if k not in ("image", "input_image")},
            "status": self.status,
            "output": output,
            "error": error,
            "logs": "",
            "urls": {
                "get": f"{base_url}/v1/predictions/{self.id}",
                "cancel": f"{base_url}/v1/predictions/{self.id}/cancel",
            },
        }


class FakeReplicate:
    """Replicate's predictions API, scriptable per test."""

    def __init__(self) -> None:
        self.base_url = ""
        self.token = "r8_test_token"
        self.lock = threading.Lock()
        self.predictions: dict[str, Prediction] = {}
        self.creates: Counter[str] = Counter()
        self.cancels: list[str] = []
        self.outcome: Outcome = "succeed"
        self.polls_needed = 2
        self.create_rate_limits = 0
        self.create_server_errors = 0
        self.create_validation_error = False
        self.malformed_polls = 0
        self.retry_after = "1"
        self.released = threading.Event()
        self.rate_limited_at: list[float] = []
        self.file_authorizations: list[str | None] = []

    @property
    def create_calls(self) -> int:
        """Predictions created (paid calls), over every input."""
        return sum(self.creates.values())

    def in_progress(self) -> list[Prediction]:
        """Predictions that were polled at least once and have not finished."""
        with self.lock:
            return [
                p
                for p in self.predictions.values()
                if p.polls > 0 and p.status in ("starting", "processing")
            ]

    def app(self) -> Starlette:
        """The ASGI app."""
        return Starlette(
            routes=[
                Route("/v1/models/{owner}/{name}/predictions", self._create, methods=["POST"]),
                Route("/v1/predictions/{pid}", self._get, methods=["GET"]),
                Route("/v1/predictions/{pid}/cancel", self._cancel, methods=["POST"]),
                Route("/files/{name}", self._file, methods=["GET"]),
            ]
        )

    def _authorised(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.token}"

    async def _create(self, request: Request) -> Response:
        if not self._authorised(request):
            return JSONResponse({"detail": "Unauthenticated"}, status_code=401)
        body = await request.json()
        with self.lock:
            if self.create_rate_limits > 0:
                self.create_rate_limits -= 1
                self.rate_limited_at.append(time.monotonic())
                return JSONResponse(
                    {"detail": "Request was throttled."},
                    status_code=429,
                    headers={"Retry-After": self.retry_after},
                )
            if self.create_server_errors > 0:
                self.create_server_errors -= 1
                return PlainTextResponse("upstream connect error", status_code=502)
            if self.create_validation_error:
                return JSONResponse(
                    {
                        "title": "Input validation failed",
                        "detail": "- input.image: Does not match format 'uri'",
                        "status": 422,
                    },
                    status_code=422,
                )
            payload = body.get("input", {})
            self.creates[_input_key(payload)] += 1
            owner, name = request.path_params["owner"], request.path_params["name"]
            prediction = Prediction(
                id=uuid.uuid4().hex[:20],
                model=f"{owner}/{name}",
                input=payload,
                outcome=self.outcome,
                polls_needed=self.polls_needed,
            )
            self.predictions[prediction.id] = prediction
            return JSONResponse(prediction.body(self.base_url), status_code=201)

    async def _get(self, request: Request) -> Response:
        if not self._authorised(request):
            return JSONResponse({"detail": "Unauthenticated"}, status_code=401)
        with self.lock:
            prediction = self.predictions.get(request.path_params["pid"])
            if prediction is None:
                return JSONResponse({"detail": "Not found."}, status_code=404)
            if self.malformed_polls > 0:
                self.malformed_polls -= 1
                return PlainTextResponse("<html>bad gateway</html>", status_code=200)
            prediction.polls += 1
            self._advance(prediction)
            return JSONResponse(prediction.body(self.base_url))

    def _advance(self, p: Prediction) -> None:
        if p.status not in ("starting", "processing"):
            return
        p.status = "processing"
        if p.outcome == "never":
            return
        if p.outcome == "hold":
            if self.released.is_set():
                p.status = "succeeded"
            return
        if p.polls >= p.polls_needed:
            p.status = {"safety": "failed", "fail": "failed"}.get(p.outcome, "succeeded")

    async def _cancel(self, request: Request) -> Response:
        with self.lock:
            prediction = self.predictions.get(request.path_params["pid"])
            if prediction is None:
                return JSONResponse({"detail": "Not found."}, status_code=404)
            self.cancels.append(prediction.id)
            if prediction.status in ("starting", "processing"):
                prediction.status = "canceled"
            return JSONResponse(prediction.body(self.base_url))

    async def _file(self, request: Request) -> Response:
        with self.lock:
            # Output files must be fetched without the API token.
            self.file_authorizations.append(request.headers.get("authorization"))
        if request.path_params["name"].startswith("missing"):
            return PlainTextResponse("Not Found", status_code=404)
        return Response(staged_photo("WEBP"), media_type="image/webp")


class FakeOpenAI:
    """OpenAI's image edit endpoint, scriptable per test."""

    def __init__(self) -> None:
        self.base_url = ""
        self.api_key = "sk-test-key"
        self.lock = threading.Lock()
        self.edits: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []
        self.outcome: Literal["succeed", "moderation", "server_error", "malformed"] = "succeed"
        self.rate_limits = 0
        self.retry_after = "1"
        self.started = 0
        self.delay_seconds = 0.0

    @property
    def edit_calls(self) -> int:
        """Image edits answered with an image (paid calls)."""
        return sum(self.edits.values())

    def app(self) -> Starlette:
        """The ASGI app."""
        return Starlette(routes=[Route("/v1/images/edits", self._edit, methods=["POST"])])

    async def _edit(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return JSONResponse(
                {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}},
                status_code=401,
            )
        form = await request.form()
        image = form.get("image")
        data = b"" if image is None or isinstance(image, str) else await image.read()
        fields = {k: v for k, v in form.items() if k != "image"}
        with self.lock:
            self.started += 1
        if self.delay_seconds:
            # A slow edit, so a test can disturb the worker while the paid call runs.
            await asyncio.sleep(self.delay_seconds)
        with self.lock:
            self.requests.append({**fields, "image_type": getattr(image, "content_type", None)})
            if self.rate_limits > 0:
                self.rate_limits -= 1
                return JSONResponse(
                    {"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}},
                    status_code=429,
                    headers={"Retry-After": self.retry_after},
                )
            if self.outcome == "moderation":
                return JSONResponse(
                    {
                        "error": {
                            "message": "Your request was rejected as a result of our safety "
                            "system.",
                            "type": "image_generation_user_error",
                            "code": "moderation_blocked",
                        }
                    },
                    status_code=400,
                )
            if self.outcome == "server_error":
                return JSONResponse(
                    {"error": {"message": "The server had an error", "type": "server_error"}},
                    status_code=500,
                )
            if self.outcome == "malformed":
                return PlainTextResponse("{not json", status_code=200)
            self.edits[hashlib.sha256(data).hexdigest()[:16]] += 1
        width, height = (int(v) for v in str(fields.get("size", "1024x1024")).split("x"))
        return JSONResponse(
            {
                "created": int(time.time()),
                "data": [
                    {"b64_json": base64.b64encode(staged_photo("PNG", (width, height))).decode()}
                ],
                "usage": {"total_tokens": 100},
            },
            headers={"x-request-id": f"req_{uuid.uuid4().hex[:12]}"},
        )


@contextmanager
def serve(app: Starlette) -> Iterator[str]:
    """Run an ASGI app on a free port of 127.0.0.1 in a thread; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the fake API server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextmanager
def fake_replicate() -> Iterator[FakeReplicate]:
    """A running fake Replicate."""
    fake = FakeReplicate()
    with serve(fake.app()) as url:
        fake.base_url = url
        yield fake


@contextmanager
def fake_openai() -> Iterator[FakeOpenAI]:
    """A running fake OpenAI."""
    fake = FakeOpenAI()
    with serve(fake.app()) as url:
        fake.base_url = url
        yield fake
