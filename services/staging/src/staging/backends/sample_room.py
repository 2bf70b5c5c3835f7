"""A synthetic photo of an empty room, for tests and the staging contact sheet."""

import random

from PIL import Image, ImageDraw, ImageFilter

RGB = tuple[int, int, int]
Vec3 = tuple[float, float, float]

# The same pinhole geometry the local backend assumes for a real photo: eye level at 38% of the
# height, the back wall meeting the floor at 56%, the camera 1.3 m up and the back wall 5.5 m away.
_HORIZON = 0.38
_FLOOR_LINE = 0.56
_EYE_M = 1.3
_BACK_M = 5.5
_HALF_WIDTH_M = 2.6
_CEILING_M = 2.7
_NEAR_M = 0.35
_SUPERSAMPLE = 2


def _jitter(rng: random.Random, color: RGB, amount: float) -> RGB:
    k = 1.0 + rng.uniform(-amount, amount)
    return (min(255, int(color[0] * k)), min(255, int(color[1] * k)), min(255, int(color[2] * k)))


def _scale(color: RGB, k: float) -> RGB:
    return (min(255, int(color[0] * k)), min(255, int(color[1] * k)), min(255, int(color[2] * k)))


class _Room:
    def __init__(self, width: int, height: int) -> None:
        self.w = width * _SUPERSAMPLE
        self.h = height * _SUPERSAMPLE
        self.cx = self.w / 2
        self.horizon = _HORIZON * self.h
        self.focal = _BACK_M * (_FLOOR_LINE - _HORIZON) * self.h / _EYE_M
        self.image = Image.new("RGB", (self.w, self.h))
        self.draw = ImageDraw.Draw(self.image)

    def project(self, p: Vec3) -> tuple[float, float]:
        x, y, z = p
        return (self.cx + self.focal * x / z, self.horizon + self.focal * (_EYE_M - y) / z)

    def poly(self, points: list[Vec3], fill: RGB, outline: RGB | None = None) -> None:
        self.draw.polygon([self.project(p) for p in points], fill=fill, outline=outline)

    def gradient_poly(self, points: list[Vec3], top: RGB, bottom: RGB) -> None:
        flat = [self.project(p) for p in points]
        x0 = max(0, int(min(p[0] for p in flat)))
        y0 = max(0, int(min(p[1] for p in flat)))
        x1 = min(self.w, int(max(p[0] for p in flat)) + 1)
        y1 = min(self.h, int(max(p[1] for p in flat)) + 1)
        if x1 - x0 < 2 or y1 - y0 < 2:
            return
        mask = Image.new("L", (x1 - x0, y1 - y0), 0)
        ImageDraw.Draw(mask).polygon([(u - x0, v - y0) for u, v in flat], fill=255)
        ramp = Image.linear_gradient("L").resize((x1 - x0, y1 - y0))
        fill = Image.composite(
            Image.new("RGB", mask.size, bottom), Image.new("RGB", mask.size, top), ramp
        )
        self.image.paste(fill, (x0, y0), mask)


def _floor_boards(room: _Room, rng: random.Random, wood: RGB) -> None:
    plank = 0.19
    gap = _scale(wood, 0.72)
    x = -_HALF_WIDTH_M
    while x < _HALF_WIDTH_M:
        z = _NEAR_M + rng.uniform(0.0, 1.5)
        start = _NEAR_M
        while start < _BACK_M:
            end = min(_BACK_M, z)
            tone = _jitter(rng, wood, 0.06)
            room.poly(
                [(x, 0, start), (x + plank, 0, start), (x + plank, 0, end), (x, 0, end)],
                fill=tone,
                outline=gap,
            )
            start = end
            z = end + rng.uniform(1.1, 2.1)
        x += plank


def _window(room: _Room, x0: float, width: float, sky: RGB) -> None:
    z = _BACK_M - 0.005
    y0, y1 = 0.95, 2.25
    frame = (246, 245, 240)
    t = 0.06
    room.poly(
        [
            (x0 - t, y0 - t, z),
            (x0 + width + t, y0 - t, z),
            (x0 + width + t, y1 + t, z),
            (x0 - t, y1 + t, z),
        ],
        fill=frame,
    )
    room.gradient_poly(
        [(x0, y0, z), (x0 + width, y0, z), (x0 + width, y1, z), (x0, y1, z)],
        top=sky,
        bottom=(236, 242, 246),
    )
    trees = (122, 150, 116)
    room.poly(
        [
            (x0, y0, z),
            (x0 + width, y0, z),
            (x0 + width, y0 + 0.28, z),
            (x0 + width * 0.6, y0 + 0.4, z),
            (x0, y0 + 0.33, z),
        ],
        fill=trees,
    )
    mid = x0 + width / 2
    room.poly(
        [(mid - 0.025, y0, z), (mid + 0.025, y0, z), (mid + 0.025, y1, z), (mid - 0.025, y1, z)],
        fill=frame,
    )
    room.poly(
        [
            (x0, y0 + 0.86, z),
            (x0 + width, y0 + 0.86, z),
            (x0 + width, y0 + 0.9, z),
            (x0, y0 + 0.9, z),
        ],
        fill=frame,
    )
    sill = (232, 230, 224)
    room.poly(
        [
            (x0 - 0.1, y0 - 0.06, z - 0.08),
            (x0 + width + 0.1, y0 - 0.06, z - 0.08),
            (x0 + width + 0.1, y0 - 0.02, z - 0.08),
            (x0 - 0.1, y0 - 0.02, z - 0.08),
        ],
        fill=_scale(sill, 0.9),
    )
    room.poly(
        [
            (x0 - 0.1, y0 - 0.02, z - 0.08),
            (x0 + width + 0.1, y0 - 0.02, z - 0.08),
            (x0 + width + 0.1, y0 - 0.02, z),
            (x0 - 0.1, y0 - 0.02, z),
        ],
        fill=sill,
    )


def _door(room: _Room, side: int, z0: float, wall: RGB, door: RGB) -> None:
    x = side * (_HALF_WIDTH_M - 0.003)
    z1 = z0 + 0.9
    trim = (244, 243, 238)
    room.poly(
        [(x, 0, z0 - 0.08), (x, 2.18, z0 - 0.08), (x, 2.18, z1 + 0.08), (x, 0, z1 + 0.08)],
        fill=trim,
        outline=_scale(wall, 0.8),
    )
    room.poly(
        [(x, 0, z0), (x, 2.1, z0), (x, 2.1, z1), (x, 0, z1)], fill=door, outline=_scale(door, 0.75)
    )
    for y0, y1 in ((0.2, 0.95), (1.15, 1.9)):
        room.poly(
            [(x, y0, z0 + 0.13), (x, y1, z0 + 0.13), (x, y1, z1 - 0.13), (x, y0, z1 - 0.13)],
            fill=_scale(door, 0.94),
            outline=_scale(door, 0.8),
        )
    hu, hv = room.project((x, 1.02, z0 + 0.09))
    r = max(1.5, room.focal * 0.03 / z0)
    room.draw.ellipse((hu - r, hv - r, hu + r, hv + r), fill=(150, 140, 120))


def _window_light(room: _Room, x0: float, width: float) -> Image.Image:
    mask = Image.new("L", room.image.size, 0)
    draw = ImageDraw.Draw(mask)
    # Sunlight through a back-wall window falls on the floor as a slanted patch toward the camera.
    patch = [
        (x0 + 0.1, 0, _BACK_M - 0.05),
        (x0 + width - 0.1, 0, _BACK_M - 0.05),
        (x0 + width + 0.5, 0, _BACK_M - 2.3),
        (x0 + 0.6, 0, _BACK_M - 2.3),
    ]
    draw.polygon([room.project(p) for p in patch], fill=110)
    return mask.filter(ImageFilter.GaussianBlur(room.h * 0.02))


def sample_room(width: int = 1200, height: int = 800, seed: int = 0) -> Image.Image:
    """Render a plausible photo of an empty room with a wood floor, a window and a door."""
    rng = random.Random(f"sample-room|{seed}")
    room = _Room(width, height)
    wall = _jitter(rng, rng.choice([(226, 222, 214), (220, 221, 218), (230, 224, 212)]), 0.02)
    wood = _jitter(rng, rng.choice([(170, 126, 84), (150, 108, 72), (188, 150, 108)]), 0.03)
    ceiling = _scale(wall, 1.06)
    hw, back, near, top = _HALF_WIDTH_M, _BACK_M, _NEAR_M, _CEILING_M

    room.image.paste(ceiling, (0, 0, room.w, room.h))
    room.gradient_poly(
        [(-hw, top, back), (hw, top, back), (hw, top, near), (-hw, top, near)],
        top=_scale(ceiling, 0.92),
        bottom=ceiling,
    )
    window_left = rng.random() < 0.5
    lit, shaded = _scale(wall, 0.97), _scale(wall, 0.84)
    left_wall, right_wall = (lit, shaded) if window_left else (shaded, lit)
    room.gradient_poly(
        [(-hw, top, near), (-hw, top, back), (-hw, 0, back), (-hw, 0, near)],
        top=_scale(left_wall, 0.95),
        bottom=left_wall,
    )
    room.gradient_poly(
        [(hw, top, near), (hw, top, back), (hw, 0, back), (hw, 0, near)],
        top=_scale(right_wall, 0.95),
        bottom=right_wall,
    )
    room.gradient_poly(
        [(-hw, top, back), (hw, top, back), (hw, 0, back), (-hw, 0, back)],
        top=_scale(wall, 0.96),
        bottom=wall,
    )
    _floor_boards(room, rng, wood)

    base = (244, 243, 238)
    bb = 0.1
    room.poly(
        [(-hw, 0, back), (hw, 0, back), (hw, bb, back), (-hw, bb, back)],
        fill=base,
        outline=_scale(base, 0.85),
    )
    for side, tone in ((-1, _scale(left_wall, 1.04)), (1, _scale(right_wall, 1.04))):
        x = side * hw
        room.poly(
            [(x, 0, near), (x, 0, back), (x, bb, back), (x, bb, near)],
            fill=tone,
            outline=_scale(tone, 0.85),
        )

    win_width = rng.uniform(1.3, 1.7)
    win_x = rng.uniform(-hw + 0.3, -0.4) if window_left else rng.uniform(0.4, hw - 0.3 - win_width)
    _window(room, win_x, win_width, sky=rng.choice([(150, 190, 226), (170, 202, 232)]))
    door_z = rng.uniform(2.6, 3.6)
    _door(room, 1 if window_left else -1, door_z, wall, _scale(base, rng.uniform(0.9, 0.98)))

    warm = Image.new("RGB", room.image.size, (255, 246, 226))
    room.image = Image.composite(warm, room.image, _window_light(room, win_x, win_width))
    vignette = Image.radial_gradient("L").resize(room.image.size).point(lambda v: v * 70 // 255)
    room.image = Image.composite(
        Image.new("RGB", room.image.size, (20, 16, 12)), room.image, vignette
    )
    small = room.image.resize((width, height), Image.Resampling.LANCZOS)
    return small.filter(ImageFilter.GaussianBlur(0.5))
