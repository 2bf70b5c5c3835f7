"""Pure parts of the remote backends: sizes, waits, input bounds and failure classes."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from contracts.reasons import FailureReason
from servicekit.messaging import PermanentError
from staging.backends.base import TransientBackendError
from staging.backends.openai import size_for
from staging.backends.remote import (
    RefusedOutput,
    RemoteLimits,
    decode_output,
    host_allowed,
    jpeg_data_url,
    output_url,
    retry_after,
)
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
        assert getattr(error, "reason", None) == FailureReason.MODEL_REFUSED_SAFETY

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


class TestOutputUrls:
    """Which output URLs may be fetched: https, allow-listed hosts, no credentials."""

    @pytest.mark.parametrize(
        ("host", "allowed"),
        [
            ("replicate.delivery", True),
            ("pbxt.replicate.delivery", True),
            ("REPLICATE.delivery.", True),
            ("evilreplicate.delivery", False),
            ("replicate.delivery.evil.example", False),
            ("api.replicate.com", False),
        ],
    )
    def test_hosts_match_the_list_exactly_or_as_subdomains(self, host: str, allowed: bool) -> None:
        assert host_allowed(host, ("replicate.delivery", "*.replicate.delivery")) is allowed

    @pytest.mark.parametrize(
        "url",
        [
            "http://replicate.delivery/out.png",
            "https://attacker.example/out.png",
            "https://user:pw@replicate.delivery/out.png",
            "ftp://replicate.delivery/out.png",
            "https://replicate.delivery.attacker.example/out.png",
        ],
    )
    def test_other_urls_are_refused_with_a_catalogue_reason(self, url: str) -> None:
        with pytest.raises(RefusedOutput) as refused:
            output_url(url, RemoteLimits(), source="Replicate")
        assert refused.value.reason == FailureReason.INTERNAL
        assert isinstance(refused.value, PermanentError)

    def test_https_on_an_allowed_host_is_fetched(self) -> None:
        url = output_url("https://pbxt.replicate.delivery/a/b.webp", RemoteLimits(), source="R")
        assert url.host == "pbxt.replicate.delivery"

    def test_http_only_when_https_is_not_required(self) -> None:
        limits = RemoteLimits(output_hosts=("127.0.0.1",), output_require_https=False)
        assert output_url("http://127.0.0.1:9/f.webp", limits, source="R").port == 9
