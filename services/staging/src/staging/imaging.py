"""Photos as they really arrive: decoding, normalising, encoding and the disclosure mark."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pillow_heif
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from contracts.reasons import FailureReason
from servicekit.messaging import PermanentError
from staging.reasons import Failure

pillow_heif.register_heif_opener()

TOO_LARGE = FailureReason.PHOTO_TOO_LARGE


class UnusablePhoto(Failure, PermanentError):
    """The photo cannot be staged, whatever we retry; the message is the detail."""

    reason = FailureReason.DAMAGED_PHOTO


@dataclass(frozen=True)
class EncodedPhoto:
    """An encoded output photo."""

    data: bytes
    content_type: str
    extension: str
    width: int
    height: int


def decode(data: bytes, *, max_pixels: int, max_side: int) -> Image.Image:
    """Open a photo upright, in RGB, scaled to fit `max_side`; refuse bombs and non-images."""
    if not data:
        raise UnusablePhoto("The photo is empty.")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if width * height > max_pixels:
                raise UnusablePhoto(
                    f"The photo is {width}x{height} pixels; at most "
                    f"{max_pixels // 1_000_000} megapixels can be staged.",
                    reason=TOO_LARGE,
                )
            if probe.format == "JPEG":
                # Let libjpeg decode at a reduced scale when the photo is much larger than needed.
                probe.draft("RGB", (max_side, max_side))
            probe.load()
            photo = ImageOps.exif_transpose(probe)
    except UnusablePhoto:
        raise
    except Image.DecompressionBombError as exc:
        raise UnusablePhoto(f"decompression bomb: {exc}", reason=TOO_LARGE) from exc
    except UnidentifiedImageError as exc:
        raise UnusablePhoto(
            f"not an image Pillow can identify: {exc}", reason=FailureReason.UNSUPPORTED_PHOTO
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise UnusablePhoto(f"damaged or truncated: {type(exc).__name__}: {exc}") from exc
    photo = to_rgb(photo)
    photo.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return photo


def to_rgb(photo: Image.Image) -> Image.Image:
    """Any mode (CMYK, 16-bit, palette, alpha) as 8-bit RGB; transparency over white."""
    if photo.mode == "RGB":
        return photo
    if photo.mode in ("I;16", "I;16B", "I;16L", "I"):
        photo = photo.point(lambda v: v / 256).convert("L")
    if photo.mode == "P":
        photo = photo.convert("RGBA")
    if photo.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", photo.size, (255, 255, 255))
        background.paste(photo.convert("RGBA"), mask=photo.convert("RGBA").getchannel("A"))
        return background
    return photo.convert("RGB")


def add_disclosure(photo: Image.Image, text: str) -> Image.Image:
    """Mark the photo as virtually staged, as listing rules require."""
    out = photo.copy()
    size = max(12, round(min(out.size) * 0.032))
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(out, "RGBA")
    _, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(4, size // 3)
    x = pad * 2
    y = out.height - (bottom - top) - pad * 4
    draw.rounded_rectangle(
        (x - pad, y - pad + top, x + right + pad, y + bottom + pad),
        radius=pad,
        fill=(0, 0, 0, 140),
    )
    draw.text((x, y), text, font=font, fill=(255, 255, 255, 235))
    return out


def encode_jpeg(photo: Image.Image, *, quality: int) -> EncodedPhoto:
    """JPEG bytes with no EXIF or GPS metadata."""
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=quality, optimize=True, progressive=True)
    return EncodedPhoto(
        data=buf.getvalue(),
        content_type="image/jpeg",
        extension=".jpg",
        width=photo.width,
        height=photo.height,
    )
