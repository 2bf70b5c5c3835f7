"""Photos as they really arrive."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from staging.imaging import UnusablePhoto, add_disclosure, decode, encode_jpeg


def _encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


class TestDecode:
    """Decoding normalises orientation, mode and size, and refuses what it must."""

    def test_exif_orientation_is_applied(self) -> None:
        img = Image.new("RGB", (200, 100), (10, 20, 30))
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90° clockwise when displayed
        photo = decode(_encode(img, "JPEG", exif=exif), max_pixels=10**8, max_side=4096)
        assert photo.size == (100, 200)

    @pytest.mark.parametrize("mode", ["CMYK", "P", "RGBA", "LA", "L", "I;16"])
    def test_every_mode_becomes_rgb(self, mode: str) -> None:
        img = Image.new(mode, (40, 30))
        fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
        assert decode(_encode(img, fmt), max_pixels=10**8, max_side=4096).mode == "RGB"

    def test_large_photos_are_scaled_to_the_backend_limit(self) -> None:
        photo = decode(
            _encode(Image.new("RGB", (3000, 2000)), "JPEG"), max_pixels=10**8, max_side=1024
        )
        assert max(photo.size) == 1024

    def test_too_many_pixels_are_refused(self) -> None:
        with pytest.raises(UnusablePhoto, match="megapixels"):
            decode(
                _encode(Image.new("L", (3000, 3000)), "PNG"), max_pixels=5_000_000, max_side=4096
            )

    @pytest.mark.parametrize("data", [b"", b"hello", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
    def test_non_images_and_truncated_files_are_refused(self, data: bytes) -> None:
        with pytest.raises(UnusablePhoto):
            decode(data, max_pixels=10**8, max_side=4096)


class TestEncode:
    """Outputs carry no metadata and are marked as staged."""

    def test_output_has_no_exif_and_is_jpeg(self) -> None:
        out = encode_jpeg(
            add_disclosure(Image.new("RGB", (300, 200)), "Virtually staged"), quality=85
        )
        reopened = Image.open(io.BytesIO(out.data))
        assert (reopened.format, out.content_type, out.extension) == ("JPEG", "image/jpeg", ".jpg")
        assert not reopened.getexif()

    def test_disclosure_mark_changes_the_bottom_of_the_photo(self) -> None:
        img = Image.new("RGB", (400, 300), (128, 128, 128))
        marked = add_disclosure(img, "Virtually staged")
        assert marked.crop((0, 200, 400, 300)).tobytes() != img.crop((0, 200, 400, 300)).tobytes()
        assert marked.crop((0, 0, 400, 100)).tobytes() == img.crop((0, 0, 400, 100)).tobytes()


class TestPhoneAndCameraPhotos:
    """What phones and cameras really send."""

    def test_heic_from_a_phone_is_decoded_upright(self) -> None:
        img = Image.new("RGB", (120, 60), (30, 140, 90))
        exif = Image.Exif()
        exif[0x0112] = 8  # rotate 90° counter-clockwise when displayed
        data = _encode(img, "HEIF", exif=exif.tobytes())
        assert data[4:12] == b"ftypheic"
        photo = decode(data, max_pixels=50_000_000, max_side=2048)
        assert (photo.mode, photo.size) == ("RGB", (60, 120))

    def test_a_48_megapixel_photo_is_accepted_and_scaled(self) -> None:
        data = _encode(Image.new("L", (8000, 6000), 128), "PNG")
        photo = decode(data, max_pixels=50_000_000, max_side=2048)
        assert photo.size == (2048, 1536)
