"""What the remote backends share: bounded photo encoding and downloads, reply parsing.

Output files are fetched by a client that carries no credentials, only over https (unless a
test turns that off) and only from the allow-listed hosts; redirects are followed by hand, so
every hop is checked before anything is sent to it.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from PIL import Image, UnidentifiedImageError

from contracts.reasons import FailureReason
from servicekit.messaging import PermanentError
from staging.backends.base import TransientBackendError
from staging.imaging import to_rgb
from staging.reasons import Failure

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT_HOSTS = ("replicate.delivery", "*.replicate.delivery")
"""Where Replicate serves prediction outputs."""
MAX_REDIRECTS = 3


@dataclass(frozen=True)
class RemoteLimits:
    """Bounds on what goes to and comes back from a remote model."""

    input_max_side: int = 1536
    input_max_bytes: int = 4 * 1024 * 1024
    output_max_bytes: int = 40 * 1024 * 1024
    request_timeout_seconds: float = 30.0
    max_retry_after_seconds: float = 30.0
    output_max_pixels: int = 50_000_000
    output_hosts: tuple[str, ...] = DEFAULT_OUTPUT_HOSTS
    output_require_https: bool = True


class RefusedOutput(Failure, PermanentError):
    """A model's output URL points somewhere we do not fetch from: the job fails at once."""

    reason = FailureReason.INTERNAL


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Whether `host` is on the list (`*.example.com` matches its subdomains only)."""
    host = host.lower().rstrip(".")
    for entry in allowed:
        entry = entry.strip().lower().rstrip(".")
        if entry.startswith("*."):
            if host.endswith(entry[1:]) and len(host) > len(entry) - 1:
                return True
        elif entry and host == entry:
            return True
    return False


def output_url(url: str, limits: RemoteLimits, *, source: str) -> httpx.URL:
    """The URL of an output file if we may fetch it; RefusedOutput (and a log) otherwise."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise _refuse(f"the {source} output URL {url[:200]!r} is not a valid URL") from exc
    schemes = ("https",) if limits.output_require_https else ("https", "http")
    if parsed.scheme not in schemes:
        raise _refuse(
            f"the {source} output URL {url[:200]!r} uses {parsed.scheme or 'no scheme'}, "
            f"not {' or '.join(schemes)}"
        )
    if parsed.userinfo:
        raise _refuse(f"the {source} output URL carries credentials")
    if not host_allowed(parsed.host, limits.output_hosts):
        raise _refuse(
            f"the {source} output URL names host {parsed.host!r}, which is not on the "
            f"allow-list ({', '.join(limits.output_hosts) or 'empty'})"
        )
    return parsed


def _refuse(detail: str) -> RefusedOutput:
    logger.warning("refusing a remote output: %s", detail)
    return RefusedOutput(detail)


def download_client(limits: RemoteLimits) -> httpx.AsyncClient:
    """A client for output files: no credentials, no proxies from the environment, no redirects."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(limits.request_timeout_seconds, connect=10.0),
        follow_redirects=False,
        trust_env=False,
    )


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
    """GET an output file from an allowed host, hop by hop, refusing more than the bound."""
    if "authorization" in client.headers:
        raise RuntimeError("output files must be fetched by a client without credentials")
    target = output_url(url, limits, source=source)
    try:
        for _ in range(MAX_REDIRECTS + 1):
            async with client.stream(
                "GET", target, timeout=limits.request_timeout_seconds, follow_redirects=False
            ) as response:
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    # Checked before the next request: a redirect off the list sends nothing.
                    target = output_url(str(target.join(location)), limits, source=source)
                    continue
                return await _read_bounded(response, limits, source=source)
    except httpx.HTTPError as exc:
        raise TransientBackendError(
            f"downloading the {source} output failed: {type(exc).__name__}"
        ) from exc
    raise _refuse(f"the {source} output redirected more than {MAX_REDIRECTS} times")


async def _read_bounded(response: httpx.Response, limits: RemoteLimits, *, source: str) -> bytes:
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
