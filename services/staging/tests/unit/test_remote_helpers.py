"""Pure parts of the remote backends: sizes, waits, input bounds and failure classes."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from servicekit.messaging import PermanentError
from staging.backends.base import TransientBackendError
from staging.backends.openai import size_for
from staging.backends.remote import RemoteLimits, decode_output, jpeg_data_url, retry_after
from staging.backends.replicate import _failure, _output_url


class TestRemoteHelpers:
    """Encoding, decoding and rate-limit waits."""

    def test_the_input_photo_is_a_bounded_jpeg_data_url(self) -> None:
        photo = Image.effect_noise((3000, 2000), 80).convert("RGB")
        limits = RemoteLimits(input_max_side=1536, input_max_bytes=400_000)
        url = jpeg_data_url(photo, limits)
        assert url.startswith("data:image/jpeg;base64,")
        data = base64.b64decode(url.partition(",")[2])
        assert len(data) <= 400_000
        sent = Image.open(io.BytesIO(data))
        assert sent.format == "JPEG"
        assert max(sent.size) <= 1536

    def test_an_output_that_is_not_an_image_is_transient(self) -> None:
        with pytest.raises(TransientBackendError, match="not a readable image"):
            decode_output(b"<html>oops</html>", RemoteLimits(), source="Replicate")

    @pytest.mark.parametrize(
        ("header", "expected"), [("3", 3.0), ("120", 30.0), ("soon", 1.0), (None, 1.0)]
    )
    def test_retry_after_is_honoured_within_a_cap(
        self, header: str | None, expected: float
    ) -> None:
        headers = {"Retry-After": header} if header else {}
        response = httpx.Response(429, headers=headers)
        assert retry_after(response, default=1.0, cap=30.0) == expected

    @pytest.mark.parametrize(
        ("size", "expected"),
        [((4000, 3000), "1536x1024"), ((3000, 4000), "1024x1536"), ((1000, 1000), "1024x1024")],
    )
    def test_openai_size_follows_the_photos_shape(
        self, size: tuple[int, int], expected: str
    ) -> None:
        assert size_for(*size) == expected


class TestReplicateReplies:
    """How a finished prediction is read."""

    def test_a_safety_failure_is_permanent_with_a_readable_reason(self) -> None:
        error = _failure("p1", {"status": "failed", "error": "NSFW content detected."})
        assert isinstance(error, PermanentError)
        assert "safety filter" in str(error)

    def test_other_failures_are_transient_and_not_resumable(self) -> None:
        error = _failure("p1", {"status": "failed", "error": "CUDA out of memory"})
        assert isinstance(error, TransientBackendError)
        assert not error.resumable

    def test_the_output_may_be_a_string_or_a_list(self) -> None:
        assert _output_url({"output": "https://x/a.png"}) == "https://x/a.png"
        assert _output_url({"output": ["https://x/b.png", "https://x/c.png"]}) == "https://x/b.png"

    @pytest.mark.parametrize("output", [None, [], 42, "not a url"])
    def test_a_missing_output_is_transient(self, output: object) -> None:
        with pytest.raises(TransientBackendError, match="without an output URL"):
            _output_url({"id": "p1", "output": output})
