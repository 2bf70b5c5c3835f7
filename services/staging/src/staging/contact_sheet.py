"""Render every room type x style on the sample room, plus a before/after pair, as JPEGs."""

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from contracts.enums import RoomType, Style
from staging.backends.local import furnish
from staging.backends.sample_room import sample_room

CELL = (320, 213)
LABEL_HEIGHT = 18
RENDER = (640, 426)
QUALITY = 85
# 80 cells of detailed wood floor need a lower quality to stay under ~600 KB.
SHEET_QUALITY = 70


def contact_sheet(seed: int = 0) -> Image.Image:
    """Return a grid with one row per room type and one column per style."""
    room = sample_room(*RENDER, seed=seed)
    font = ImageFont.load_default(size=12)
    sheet = Image.new("RGB", (CELL[0] * len(Style), CELL[1] * len(RoomType)), (255, 255, 255))
    for row, room_type in enumerate(RoomType):
        for col, style in enumerate(Style):
            cell = furnish(room, room_type, style, seed).resize(CELL, Image.Resampling.LANCZOS)
            draw = ImageDraw.Draw(cell, "RGBA")
            draw.rectangle((0, CELL[1] - LABEL_HEIGHT, CELL[0], CELL[1]), fill=(0, 0, 0, 150))
            draw.text(
                (6, CELL[1] - LABEL_HEIGHT + 3),
                f"{room_type} · {style}",
                fill=(255, 255, 255),
                font=font,
            )
            sheet.paste(cell, (col * CELL[0], row * CELL[1]))
    return sheet


def main() -> None:
    """Write the contact sheet and, next to it, before.jpg and after.jpg."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/images/contact-sheet.jpg"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(args.seed).save(out, quality=SHEET_QUALITY, optimize=True)
    before = sample_room(1200, 800, seed=args.seed)
    before.save(out.parent / "before.jpg", quality=QUALITY, optimize=True)
    after = furnish(before, RoomType.LIVING_ROOM, Style.SCANDINAVIAN, args.seed)
    after.save(out.parent / "after.jpg", quality=QUALITY, optimize=True)


if __name__ == "__main__":
    main()
