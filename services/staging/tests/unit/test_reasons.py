"""Every failure a job can end with maps to a catalogue sentence; its detail stays apart."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from contracts.reasons import CATALOGUE, FailureReason
from staging.backends.base import BackendRefused, LeaseLost, TransientBackendError
from staging.backends.remote import RefusedOutput
from staging.imaging import UnusablePhoto, decode
from staging.reasons import detail_of, reason_for


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (400, 300), (120, 110, 100)).save(buf, "JPEG")
    return buf.getvalue()


class TestReasons:
    """From exceptions to what the owner reads."""

    @pytest.mark.parametrize(
        ("exc", "reason"),
        [
            (UnusablePhoto("truncated"), FailureReason.DAMAGED_PHOTO),
            (BackendRefused("HTTP 422: bad input"), FailureReason.MODEL_REFUSED),
            (TransientBackendError("HTTP 503"), FailureReason.SERVICE_BUSY),
            (LeaseLost("taken over"), FailureReason.SERVICE_BUSY),
            (RefusedOutput("host evil.example"), FailureReason.INTERNAL),
            (ConnectionRefusedError("S3 away"), FailureReason.SERVICE_BUSY),
            (KeyError("bug"), FailureReason.INTERNAL),
            (
                TransientBackendError("no output", reason=FailureReason.TOOK_TOO_LONG),
                FailureReason.TOOK_TOO_LONG,
            ),
        ],
    )
    def test_each_failure_has_a_catalogue_reason(
        self, exc: BaseException, reason: FailureReason
    ) -> None:
        assert reason_for(exc) == reason
        assert reason_for(exc).value in CATALOGUE

    def test_the_detail_keeps_the_technical_text(self) -> None:
        detail = detail_of(ValueError("object uploads/u/x.jpg is larger than 10 bytes"))
        assert detail == "ValueError: object uploads/u/x.jpg is larger than 10 bytes"

    @pytest.mark.parametrize(
        ("data", "reason"),
        [
            (b"", FailureReason.DAMAGED_PHOTO),
            (b"%PDF-1.7 not a photo at all", FailureReason.UNSUPPORTED_PHOTO),
            (_jpeg()[:200], FailureReason.DAMAGED_PHOTO),
        ],
    )
    def test_unusable_photos_say_why_in_catalogue_words(
        self, data: bytes, reason: FailureReason
    ) -> None:
        with pytest.raises(UnusablePhoto) as refused:
            decode(data, max_pixels=10_000_000, max_side=1024)
        assert refused.value.reason == reason

    def test_a_photo_with_too_many_pixels_is_too_large(self) -> None:
        with pytest.raises(UnusablePhoto) as refused:
            decode(_jpeg(), max_pixels=1000, max_side=1024)
        assert refused.value.reason == FailureReason.PHOTO_TOO_LARGE
