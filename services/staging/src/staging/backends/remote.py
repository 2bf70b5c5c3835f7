"""What the remote backends share: bounded photo encoding and downloads, reply parsing."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from PIL import Image, UnidentifiedImageError

from staging.backends.base import TransientBackendError
from staging.imaging import to_rgb


@dataclass(frozen=True)
class RemoteLimits:
    """Bounds on what goes to and comes back from a remote model."""

    input_max_side: int = 1536
    input_max_bytes: int = 4 * 1024 * 1024
    output_max_bytes: int = 40 * 1024 * 1024
    request_timeout_seconds: float = 30.0
    max_retry_after_seconds: float = 30.0
    output_max_pixels: int = 50_000_000


def _fit(photo: Image.Image, max_side: int) -> Image.Image:
    photo = to_rgb(photo)
    if max(photo.size) > max_side:
        photo = photo.copy()
        photo.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return photo


def jpeg_data_url(photo: Image.Image, limits: RemoteLimits) -> str:
    """The photo as a `data:image/jpeg;base64,...` URL within the input bounds (CPU-bound)."""
    photo = _fit(photo, limits.input_max_side)
    quality = 90
    while True:
        buf = io.BytesIO()
        photo.save(buf, "JPEG", quality=quality, optimize=True)
        if buf.tell() <= limits.input_max_bytes or quality <= 50:
            break
        # Lower quality before lowering resolution: the model needs the room's geometry.
        quality -= 10
    if buf.tell() > limits.input_max_bytes:
        photo.thumbnail((photo.width // 2, photo.height // 2), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        photo.save(buf, "JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_bytes(photo: Image.Image, limits: RemoteLimits) -> bytes:
    """The photo as PNG within the input side bound (CPU-bound)."""
    buf = io.BytesIO()
    _fit(photo, limits.input_max_side).save(buf, "PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def decode_output(data: bytes, limits: RemoteLimits, *, source: str) -> Image.Image:
    """Decode a model's output photo to RGB; an unreadable one is a transient failure."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            if probe.width * probe.height > limits.output_max_pixels:
                raise TransientBackendError(
                    f"{source} returned a {probe.width}x{probe.height} image, larger than allowed"
                )
            probe.load()
            return to_rgb(probe)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise TransientBackendError(
            f"{source} returned an output that is not a readable image ({len(data)} bytes)"
        ) from exc


async def download(
    client: httpx.AsyncClient, url: str, limits: RemoteLimits, *, source: str
) -> bytes:
    """GET an output file, refusing anything larger than the output bound."""
    try:
        async with client.stream(
            "GET", url, timeout=limits.request_timeout_seconds, follow_redirects=True
        ) as response:
            if response.status_code != 200:
                raise TransientBackendError(
                    f"downloading the {source} output failed with HTTP {response.status_code}"
                )
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limits.output_max_bytes:
                raise TransientBackendError(f"the {source} output is too large ({declared} bytes)")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limits.output_max_bytes:
                    raise TransientBackendError(f"the {source} output is larger than allowed")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise TransientBackendError(
            f"downloading the {source} output failed: {type(exc).__name__}"
        ) from exc


def retry_after(response: httpx.Response, *, default: float, cap: float) -> float:
    """Seconds a 429 or 503 asks us to wait (`Retry-After` as seconds or a date), bounded."""
    value = response.headers.get("retry-after", "").strip()
    seconds = default
    if value:
        try:
            seconds = float(value)
        except ValueError:
            try:
                seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
            except (TypeError, ValueError):
                seconds = default
    return max(0.0, min(seconds, cap))


def json_object(response: httpx.Response, *, source: str) -> dict[str, Any]:
    """The reply body as a JSON object; anything else is a malformed (transient) reply."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise TransientBackendError(
            f"{source} answered HTTP {response.status_code} with a body that is not JSON"
        ) from exc
    if not isinstance(body, dict):
        raise TransientBackendError(f"{source} answered with JSON that is not an object")
    return body


def error_text(response: httpx.Response) -> str:
    """A short, readable description of an error reply."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return str(err.get("message") or err.get("code") or err)[:300]
        for key in ("detail", "title", "error", "message"):
            if body.get(key):
                return str(body[key])[:300]
    return str(body)[:300]
