"""The `openai` backend: OpenAI's image edit API (`gpt-image-1`), one synchronous call.

There is no prediction id to store and resume: the result comes back in the reply to the one
paid call. A worker that dies during that call (tens of seconds) leaves the job to be retried,
and the retry pays again; OpenAI offers no idempotency key for image edits. The window is kept to
the call itself: the input is prepared before it, and the result is decoded and stored right
after it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from dataclasses import dataclass, field

import httpx
from PIL import Image

from contracts.reasons import FailureReason
from staging.backends.base import (
    NO_OP_SUBMITTED,
    BackendRefused,
    OnSubmitted,
    StageRequest,
    StageResult,
    TransientBackendError,
)
from staging.backends.prompts import build_prompt
from staging.backends.remote import (
    RemoteLimits,
    decode_output,
    error_text,
    json_object,
    png_bytes,
    retry_after,
)

SOURCE = "OpenAI"
MODEL = "gpt-image-1"
RATE_LIMIT_RETRIES = 3

PRICES_USD: dict[tuple[str, str], float] = {
    # Per output image, as OpenAI lists them for gpt-image-1.
    ("low", "1024x1024"): 0.011,
    ("low", "1536x1024"): 0.016,
    ("low", "1024x1536"): 0.016,
    ("medium", "1024x1024"): 0.042,
    ("medium", "1536x1024"): 0.063,
    ("medium", "1024x1536"): 0.063,
    ("high", "1024x1024"): 0.167,
    ("high", "1536x1024"): 0.25,
    ("high", "1024x1536"): 0.25,
}

_SAFETY = re.compile(r"moderation|safety|content polic|flagged", re.IGNORECASE)


@dataclass(frozen=True)
class OpenAIConfig:
    """Where OpenAI is, with which key, and how long one edit may take."""

    api_key: str
    api_base: str = "https://api.openai.com"
    quality: str = "medium"
    timeout_seconds: float = 180.0
    limits: RemoteLimits = field(default_factory=RemoteLimits)


def size_for(width: int, height: int) -> str:
    """The supported output size closest to the photo's aspect ratio."""
    ratio = width / height
    if ratio >= 1.25:
        return "1536x1024"
    if ratio <= 0.8:
        return "1024x1536"
    return "1024x1024"


class OpenAIBackend:
    """Stages photos with OpenAI's image edit endpoint."""

    name = "openai"
    models: tuple[str, ...] = (MODEL,)

    def __init__(self, config: OpenAIConfig) -> None:
        self.config = config
        self._client = httpx.AsyncClient(
            base_url=config.api_base.rstrip("/"),
            headers={"Authorization": f"Bearer {config.api_key}"},
            timeout=httpx.Timeout(config.timeout_seconds, connect=10.0),
            trust_env=False,
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def stage(
        self,
        request: StageRequest,
        *,
        resume_id: str | None = None,
        on_submitted: OnSubmitted = NO_OP_SUBMITTED,
    ) -> StageResult:
        """Send the photo and the prompt; decode the edited photo from the reply."""
        image = await asyncio.to_thread(png_bytes, request.photo, self.config.limits)
        size = size_for(*request.photo.size)
        prompt = build_prompt(request.room_type, request.style).inline()
        data = {
            "model": MODEL,
            "prompt": prompt,
            "size": size,
            "quality": self.config.quality,
            "n": "1",
        }
        files = {"image": ("room.png", image, "image/png")}
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            try:
                response = await self._client.post("/v1/images/edits", data=data, files=files)
            except httpx.HTTPError as exc:
                raise TransientBackendError(
                    f"the call to OpenAI failed ({type(exc).__name__})"
                ) from exc
            if response.status_code == 429 and attempt < RATE_LIMIT_RETRIES:
                await asyncio.sleep(
                    retry_after(
                        response, default=2.0, cap=self.config.limits.max_retry_after_seconds
                    )
                )
                continue
            break
        self._raise_for_status(response)
        # A reply of several megabytes of base64: parse and decode it off the event loop.
        photo = await asyncio.to_thread(_photo_from_reply, response, self.config.limits)
        return StageResult(
            photo=photo,
            model=MODEL,
            cost_usd=PRICES_USD.get((self.config.quality, size)),
            prediction_id=response.headers.get("x-request-id"),
        )

    def _raise_for_status(self, response: httpx.Response) -> None:
        code = response.status_code
        if code < 400:
            return
        detail = error_text(response)
        if code in (400, 422):
            if _SAFETY.search(detail) or "moderation_blocked" in response.text:
                raise BackendRefused(
                    f"OpenAI's safety system refused the edit (HTTP {code}): {detail}",
                    reason=FailureReason.MODEL_REFUSED_SAFETY,
                )
            raise BackendRefused(f"OpenAI refused the edit (HTTP {code}): {detail}")
        if code in (401, 403):
            raise TransientBackendError(
                f"OpenAI refused our API key (HTTP {code}); check STAGING_OPENAI_API_KEY"
            )
        raise TransientBackendError(f"OpenAI answered HTTP {code}: {detail}")


def _photo_from_reply(response: httpx.Response, limits: RemoteLimits) -> Image.Image:
    body = json_object(response, source=SOURCE)
    items = body.get("data")
    first = items[0] if isinstance(items, list) and items else None
    encoded = first.get("b64_json") if isinstance(first, dict) else None
    if not isinstance(encoded, str) or not encoded:
        raise TransientBackendError("OpenAI's reply has no data[0].b64_json image")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TransientBackendError("OpenAI's image is not valid base64") from exc
    return decode_output(raw, limits, source=SOURCE)
