"""Offline, deterministic staging: furnishes an empty-room photo with stylised Pillow drawings.

The photo is treated as taken by a level pinhole camera 1.3 m above the floor. The floor line
(where the back wall meets the floor) is estimated from the strongest horizontal luminance edge
in the 35-70% band of the height, with a prior toward 55%. Eye level (the horizon) is put 18% of
the height above that line and the back wall 5.5 m away, which fixes the focal length. Furniture
is then modelled in metres, projected with that camera and painted back to front, so a piece
standing lower in the frame is nearer and larger, and rugs become perspective trapezoids.
"""

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from PIL import Image, ImageChops, ImageDraw, ImageFilter

from contracts.enums import RoomType, Style

RGB = tuple[int, int, int]
Vec3 = tuple[float, float, float]
Point = tuple[float, float]
Face = list[Vec3]

SUPERSAMPLE = 2
EYE_HEIGHT_M = 1.3
BACK_WALL_M = 5.5
CEILING_M = 2.7
HORIZON_ABOVE_FLOOR_LINE = 0.18
DEFAULT_FLOOR_LINE = 0.55
FLOOR_SEARCH_BAND = (0.35, 0.70)
SIDE_MARGIN = 0.12
MAX_COVERAGE = 0.38
MAX_RETRIES = 4
_LIGHT = (-0.342, 0.830, -0.440)
_SHADOW_SCALE = 4

LegStyle = Literal["tapered", "slim", "metal", "chunky", "turned", "plinth"]
RugPattern = Literal["solid", "border", "medallion", "stripes", "dots", "boho", "geometric"]
Kind = Literal["rug", "wall", "floor", "ceiling"]


@dataclass(frozen=True)
class Palette:
    """Colours and shape traits of one style."""

    wood: RGB
    fabric: RGB
    linen: RGB
    accent: RGB
    metal: RGB
    rug: RGB
    rug_trim: RGB
    pot: RGB
    stone: RGB
    legs: LegStyle
    rug_pattern: RugPattern
    chunk: float = 1.0
    round_tables: bool = False
    upholstered_chairs: bool = False
    sparse: bool = False


PALETTES: dict[Style, Palette] = {
    Style.MODERN: Palette(
        wood=(92, 82, 74),
        fabric=(122, 124, 128),
        linen=(224, 224, 222),
        accent=(36, 104, 150),
        metal=(38, 38, 40),
        rug=(188, 186, 182),
        rug_trim=(112, 112, 116),
        pot=(58, 58, 60),
        stone=(236, 236, 234),
        legs="plinth",
        rug_pattern="border",
    ),
    Style.CONTEMPORARY: Palette(
        wood=(156, 124, 94),
        fabric=(170, 162, 152),
        linen=(234, 230, 224),
        accent=(96, 128, 108),
        metal=(182, 152, 98),
        rug=(204, 196, 184),
        rug_trim=(150, 140, 128),
        pot=(176, 174, 168),
        stone=(226, 222, 214),
        legs="metal",
        rug_pattern="solid",
        upholstered_chairs=True,
    ),
    Style.TRADITIONAL: Palette(
        wood=(88, 52, 32),
        fabric=(128, 44, 50),
        linen=(230, 218, 196),
        accent=(40, 62, 104),
        metal=(176, 146, 84),
        rug=(140, 48, 44),
        rug_trim=(38, 56, 98),
        pot=(44, 70, 118),
        stone=(222, 214, 200),
        legs="turned",
        rug_pattern="medallion",
        upholstered_chairs=True,
    ),
    Style.INDUSTRIAL: Palette(
        wood=(118, 82, 54),
        fabric=(128, 80, 48),
        linen=(188, 184, 176),
        accent=(168, 66, 42),
        metal=(34, 34, 36),
        rug=(90, 90, 94),
        rug_trim=(140, 140, 142),
        pot=(96, 96, 98),
        stone=(120, 120, 122),
        legs="metal",
        rug_pattern="stripes",
        chunk=0.8,
    ),
    Style.SCANDINAVIAN: Palette(
        wood=(216, 186, 142),
        fabric=(196, 196, 192),
        linen=(244, 242, 237),
        accent=(124, 152, 170),
        metal=(58, 58, 58),
        rug=(236, 232, 222),
        rug_trim=(172, 168, 160),
        pot=(240, 238, 232),
        stone=(244, 242, 238),
        legs="slim",
        rug_pattern="geometric",
    ),
    Style.RUSTIC: Palette(
        wood=(142, 92, 54),
        fabric=(154, 124, 92),
        linen=(224, 210, 186),
        accent=(162, 72, 44),
        metal=(56, 50, 46),
        rug=(170, 128, 88),
        rug_trim=(110, 70, 44),
        pot=(160, 96, 62),
        stone=(142, 96, 60),
        legs="chunky",
        rug_pattern="border",
        chunk=1.3,
    ),
    Style.COASTAL: Palette(
        wood=(222, 208, 184),
        fabric=(238, 234, 224),
        linen=(250, 248, 242),
        accent=(60, 112, 164),
        metal=(206, 200, 190),
        rug=(222, 208, 178),
        rug_trim=(72, 120, 172),
        pot=(212, 196, 166),
        stone=(246, 244, 238),
        legs="slim",
        rug_pattern="stripes",
        round_tables=True,
    ),
    Style.BOHEMIAN: Palette(
        wood=(154, 102, 62),
        fabric=(196, 112, 72),
        linen=(234, 216, 188),
        accent=(44, 116, 116),
        metal=(176, 134, 72),
        rug=(178, 86, 54),
        rug_trim=(236, 204, 144),
        pot=(196, 116, 76),
        stone=(230, 214, 190),
        legs="slim",
        rug_pattern="boho",
        round_tables=True,
    ),
    Style.MINIMALIST: Palette(
        wood=(204, 190, 170),
        fabric=(222, 220, 214),
        linen=(242, 240, 236),
        accent=(150, 148, 142),
        metal=(42, 42, 42),
        rug=(214, 210, 202),
        rug_trim=(196, 192, 184),
        pot=(240, 240, 238),
        stone=(240, 240, 238),
        legs="plinth",
        rug_pattern="solid",
        sparse=True,
    ),
    Style.MID_CENTURY_MODERN: Palette(
        wood=(112, 68, 40),
        fabric=(206, 152, 42),
        linen=(236, 228, 210),
        accent=(32, 112, 122),
        metal=(176, 146, 84),
        rug=(228, 218, 194),
        rug_trim=(32, 112, 122),
        pot=(230, 226, 218),
        stone=(236, 230, 218),
        legs="tapered",
        rug_pattern="dots",
        round_tables=True,
    ),
}

_LEAF_GREENS: tuple[RGB, ...] = ((52, 112, 62), (74, 140, 74), (38, 92, 54), (92, 150, 80))


def _scale(c: RGB, k: float) -> RGB:
    return (
        min(255, max(0, int(c[0] * k))),
        min(255, max(0, int(c[1] * k))),
        min(255, max(0, int(c[2] * k))),
    )


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return (
        int(a[0] + (b[0] - a[0]) * t),
        int(a[1] + (b[1] - a[1]) * t),
        int(a[2] + (b[2] - a[2]) * t),
    )


def _rgba(c: RGB, alpha: int = 255) -> tuple[int, int, int, int]:
    return (c[0], c[1], c[2], alpha)


@dataclass(frozen=True)
class Camera:
    """A level pinhole camera at eye height; image coordinates in pixels."""

    cx: float
    horizon: float
    focal: float
    width: int
    height: int

    def project(self, p: Vec3) -> Point:
        """Map a world point (metres: x right, y up, z away) to image coordinates."""
        z = max(p[2], 0.05)
        return (
            self.cx + self.focal * p[0] / z,
            self.horizon + self.focal * (EYE_HEIGHT_M - p[1]) / z,
        )

    def ppm(self, z: float) -> float:
        """Pixels per metre at depth z."""
        return self.focal / max(z, 0.05)

    def depth_of_row(self, v: float) -> float:
        """Depth of the floor point seen at image row v."""
        return self.focal * EYE_HEIGHT_M / max(v - self.horizon, 1e-3)

    def scaled(self, k: float) -> "Camera":
        """The same camera for an image k times larger."""
        return Camera(
            self.cx * k,
            self.horizon * k,
            self.focal * k,
            round(self.width * k),
            round(self.height * k),
        )


def estimate_floor_line(photo: Image.Image) -> float:
    """Return the row (as a fraction of the height) where the back wall meets the floor."""
    w, h = photo.size
    if h < 20 or w < 4:
        return DEFAULT_FLOOR_LINE
    rows = min(h, 200)
    strip = photo.crop((w // 4, 0, max(w // 4 + 1, 3 * w // 4), h)).convert("L")
    means = list(strip.resize((1, rows), Image.Resampling.BOX).tobytes())
    lo, hi = int(FLOOR_SEARCH_BAND[0] * rows), int(FLOOR_SEARCH_BAND[1] * rows)
    best, best_row = 0.0, -1
    for i in range(max(lo, 2), min(hi, rows - 2)):
        edge = abs((means[i + 1] + means[i + 2]) - (means[i - 1] + means[i - 2])) / 2
        # Mild prior toward the usual position so a window sill or counter edge rarely wins.
        weighted = edge * (1.0 - 1.2 * abs(i / rows - DEFAULT_FLOOR_LINE))
        if weighted > best:
            best, best_row = weighted, i
    if best < 6.0:
        return DEFAULT_FLOOR_LINE
    return (best_row + 0.5) / rows


def camera_for(photo: Image.Image) -> Camera:
    """Build the camera that explains the photo's estimated floor line."""
    w, h = photo.size
    floor_line = estimate_floor_line(photo) * h
    horizon = max(0.12 * h, floor_line - HORIZON_ABOVE_FLOOR_LINE * h)
    focal = BACK_WALL_M * (floor_line - horizon) / EYE_HEIGHT_M
    return Camera(cx=w / 2, horizon=horizon, focal=focal, width=w, height=h)


@dataclass(frozen=True)
class Frame:
    """A piece's local coordinates: origin on the floor at its centre, -z faces the camera."""

    x: float
    z: float
    yaw: float = 0.0

    def world(self, lx: float, ly: float, lz: float) -> Vec3:
        """Local point to world point."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return (self.x + c * lx + s * lz, ly, self.z - s * lx + c * lz)

    def direction(self, lx: float, lz: float) -> Vec3:
        """Local horizontal direction to world direction."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return (c * lx + s * lz, 0.0, -s * lx + c * lz)


def _sub(a: Vec3, b: Vec3) -> Vec3:
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2])


def _dot(a: Vec3, b: Vec3) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _mean(points: Sequence[Vec3]) -> Vec3:
    n = len(points)
    return (
        sum(p[0] for p in points) / n,
        sum(p[1] for p in points) / n,
        sum(p[2] for p in points) / n,
    )


def _normal(face: Face) -> Vec3:
    nx = ny = nz = 0.0
    for i, a in enumerate(face):
        b = face[(i + 1) % len(face)]
        nx += (a[1] - b[1]) * (a[2] + b[2])
        ny += (a[2] - b[2]) * (a[0] + b[0])
        nz += (a[0] - b[0]) * (a[1] + b[1])
    length = math.sqrt(nx * nx + ny * ny + nz * nz) or 1.0
    return (nx / length, ny / length, nz / length)


_CAMERA: Vec3 = (0.0, EYE_HEIGHT_M, 0.0)


def box_faces(
    fr: Frame, x0: float, x1: float, y0: float, y1: float, z0: float, z1: float
) -> list[Face]:
    """The six faces of a local axis-aligned box."""
    return prism_faces(fr, [(y0, z0), (y1, z0), (y1, z1), (y0, z1)], x0, x1)


def prism_faces(
    fr: Frame, profile: Sequence[tuple[float, float]], x0: float, x1: float
) -> list[Face]:
    """A convex (y, z) profile extruded along local x."""
    left = [fr.world(x0, y, z) for y, z in profile]
    right = [fr.world(x1, y, z) for y, z in profile]
    faces = [left, right[::-1]]
    n = len(profile)
    for i in range(n):
        j = (i + 1) % n
        faces.append([left[i], right[i], right[j], left[j]])
    return faces


def cylinder_faces(
    fr: Frame, lx: float, lz: float, r0: float, r1: float, y0: float, y1: float, segments: int = 20
) -> list[Face]:
    """A vertical frustum of radii r0 (bottom) and r1 (top)."""
    cx, _, cz = fr.world(lx, 0.0, lz)
    ring0, ring1 = [], []
    for i in range(segments):
        a = 2 * math.pi * i / segments
        ring0.append((cx + r0 * math.cos(a), y0, cz + r0 * math.sin(a)))
        ring1.append((cx + r1 * math.cos(a), y1, cz + r1 * math.sin(a)))
    faces = [ring0, ring1[::-1]]
    for i in range(segments):
        j = (i + 1) % segments
        faces.append([ring0[i], ring0[j], ring1[j], ring1[i]])
    return faces


def _shade(color: RGB, normal: Vec3) -> RGB:
    return _scale(color, 0.68 + 0.42 * max(0.0, _dot(normal, _LIGHT)))


class Renderer:
    """Draws solids into a supersampled RGBA layer and soft contact shadows into a mask."""

    def __init__(self, camera: Camera) -> None:
        self.cam = camera.scaled(SUPERSAMPLE)
        size = (self.cam.width, self.cam.height)
        # Rugs get their own layer so contact shadows can fall on them, under the furniture.
        self.rugs = Image.new("RGBA", size, (0, 0, 0, 0))
        self.furniture = Image.new("RGBA", size, (0, 0, 0, 0))
        self.image = self.furniture
        self.draw = ImageDraw.Draw(self.image)
        self.shadow_cam = camera.scaled(1 / _SHADOW_SCALE)
        size = (max(1, self.shadow_cam.width), max(1, self.shadow_cam.height))
        self.soft = Image.new("L", size, 0)
        self.contact = Image.new("L", size, 0)

    def use_layer(self, rugs: bool) -> None:
        """Send the following drawing to the rug layer or to the furniture layer."""
        self.image = self.rugs if rugs else self.furniture
        self.draw = ImageDraw.Draw(self.image)

    def project(self, p: Vec3) -> Point:
        """World point to canvas point."""
        return self.cam.project(p)

    def px(self, metres: float, z: float) -> float:
        """A length in metres at depth z as canvas pixels."""
        return metres * self.cam.ppm(z)

    def faces_camera(self, fr: Frame, at: Vec3, normal_xz: tuple[float, float]) -> bool:
        """Whether a local vertical face through `at` with that local normal is seen."""
        n = fr.direction(*normal_xz)
        return _dot(n, _sub(_CAMERA, fr.world(*at))) > 0

    def solid(
        self,
        faces: list[Face],
        color: RGB,
        *,
        edge: bool = True,
        round_front: float = 0.0,
        gradient: float = 0.0,
    ) -> None:
        """Paint the visible faces of a convex solid with directional shading."""
        centroid = _mean([p for f in faces for p in f])
        for face in faces:
            n = _normal(face)
            centre = _mean(face)
            if _dot(n, _sub(centre, centroid)) < 0:
                n = (-n[0], -n[1], -n[2])
            if _dot(n, _sub(_CAMERA, centre)) <= 1e-9:
                continue
            fill = _shade(color, n)
            poly = [self.project(p) for p in face]
            outline = _scale(fill, 0.78) if edge else None
            front = abs(n[2] + 1) < 1e-6
            if front and round_front > 0:
                xs, ys = [p[0] for p in poly], [p[1] for p in poly]
                box = (min(xs), min(ys), max(xs), max(ys))
                radius = min(
                    self.px(round_front, centre[2]), (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
                )
                self.draw.rounded_rectangle(
                    box,
                    radius=max(0, int(radius)),
                    fill=_rgba(fill),
                    outline=_rgba(outline) if outline else None,
                )
            elif gradient and abs(n[1]) < 0.5:
                self._gradient(poly, _scale(fill, 1 + gradient / 2), _scale(fill, 1 - gradient / 2))
                if outline:
                    self.draw.polygon(poly, outline=_rgba(outline))
            else:
                self.draw.polygon(
                    poly, fill=_rgba(fill), outline=_rgba(outline) if outline else None
                )

    def _gradient(self, poly: list[Point], top: RGB, bottom: RGB) -> None:
        x0 = max(0, math.floor(min(p[0] for p in poly)))
        y0 = max(0, math.floor(min(p[1] for p in poly)))
        x1 = min(self.cam.width, math.ceil(max(p[0] for p in poly)) + 1)
        y1 = min(self.cam.height, math.ceil(max(p[1] for p in poly)) + 1)
        if x1 - x0 < 2 or y1 - y0 < 4:
            self.draw.polygon(poly, fill=_rgba(_mix(top, bottom, 0.5)))
            return
        size = (x1 - x0, y1 - y0)
        mask = Image.new("L", size, 0)
        ImageDraw.Draw(mask).polygon([(u - x0, v - y0) for u, v in poly], fill=255)
        ramp = Image.linear_gradient("L").resize(size)
        fill = Image.composite(
            Image.new("RGBA", size, _rgba(bottom)), Image.new("RGBA", size, _rgba(top)), ramp
        )
        self.image.paste(fill, (x0, y0), mask)

    def box(
        self,
        fr: Frame,
        x0: float,
        x1: float,
        y0: float,
        y1: float,
        z0: float,
        z1: float,
        color: RGB,
        *,
        edge: bool = True,
        round_front: float = 0.0,
        gradient: float = 0.0,
    ) -> None:
        """Paint a local box."""
        self.solid(
            box_faces(fr, x0, x1, y0, y1, z0, z1),
            color,
            edge=edge,
            round_front=round_front,
            gradient=gradient,
        )

    def cylinder(
        self,
        fr: Frame,
        lx: float,
        lz: float,
        r0: float,
        r1: float,
        y0: float,
        y1: float,
        color: RGB,
    ) -> None:
        """Paint a vertical frustum with a rim outline on its top."""
        faces = cylinder_faces(fr, lx, lz, r0, r1, y0, y1)
        self.solid(faces, color, edge=False)
        if y1 < EYE_HEIGHT_M:
            top = [self.project(p) for p in faces[1]]
            self.draw.polygon(top, outline=_rgba(_scale(color, 0.8)))

    def disc(self, centre: Vec3, radius: float, color: RGB, segments: int = 28) -> None:
        """Paint a horizontal circle (seen as an ellipse)."""
        x, y, z = centre
        pts = [
            self.project(
                (
                    x + radius * math.cos(2 * math.pi * i / segments),
                    y,
                    z + radius * math.sin(2 * math.pi * i / segments),
                )
            )
            for i in range(segments)
        ]
        self.draw.polygon(pts, fill=_rgba(color))

    def floor_poly(
        self,
        fr: Frame,
        points: Sequence[tuple[float, float]],
        color: RGB,
        y: float = 0.0,
        alpha: int = 255,
    ) -> None:
        """Paint a flat polygon given in local (x, z) at height y."""
        self.draw.polygon(
            [self.project(fr.world(x, y, z)) for x, z in points], fill=_rgba(color, alpha)
        )

    def wall_rect(
        self,
        x0: float,
        x1: float,
        y0: float,
        y1: float,
        z: float,
        color: RGB,
        radius: float = 0.0,
        ellipse: bool = False,
    ) -> tuple[float, float, float, float]:
        """Paint a rectangle on a wall facing the camera and return its canvas box."""
        u0, v1 = self.project((x0, y0, z))
        u1, v0 = self.project((x1, y1, z))
        box = (u0, v0, u1, v1)
        if ellipse:
            self.draw.ellipse(box, fill=_rgba(color))
        else:
            self.draw.rounded_rectangle(box, radius=int(self.px(radius, z)), fill=_rgba(color))
        return box

    def beam(self, top: Vec3, bottom: Vec3, w_top: float, w_bottom: float, color: RGB) -> None:
        """Paint a thin tapered rod (leg, pole, cord) between two world points."""
        ut, vt = self.project(top)
        ub, vb = self.project(bottom)
        ht = max(0.6, self.px(w_top, top[2]) / 2)
        hb = max(0.6, self.px(w_bottom, bottom[2]) / 2)
        dx, dy = ub - ut, vb - vt
        length = math.hypot(dx, dy) or 1.0
        nx, ny = -dy / length, dx / length
        self.draw.polygon(
            [
                (ut + nx * ht, vt + ny * ht),
                (ut - nx * ht, vt - ny * ht),
                (ub - nx * hb, vb - ny * hb),
                (ub + nx * hb, vb + ny * hb),
            ],
            fill=_rgba(color),
        )

    def blob(
        self,
        centre: Vec3,
        rx: float,
        ry: float,
        color: RGB,
        angle: float = 0.0,
        power: float = 2.0,
        points: int = 28,
    ) -> None:
        """Paint a screen-facing superellipse (pillow, leaf, shade) sized in metres."""
        u, v = self.project(centre)
        ax, ay = self.px(rx, centre[2]), self.px(ry, centre[2])
        c, s = math.cos(angle), math.sin(angle)
        pts = []
        for i in range(points):
            t = 2 * math.pi * i / points
            ct, st = math.cos(t), math.sin(t)
            px = ax * math.copysign(abs(ct) ** (2 / power), ct)
            py = ay * math.copysign(abs(st) ** (2 / power), st)
            pts.append((u + c * px - s * py, v + s * px + c * py))
        self.draw.polygon(pts, fill=_rgba(color))

    def leaf(self, base: Vec3, length: float, width: float, angle: float, color: RGB) -> None:
        """Paint a pointed leaf growing from `base` at `angle` (0 = straight up)."""
        u, v = self.project(base)
        ln, wd = self.px(length, base[2]), self.px(width, base[2])
        dx, dy = math.sin(angle), -math.cos(angle)
        pts = []
        for i in range(9):
            t = i / 8
            half = wd * math.sin(math.pi * t) * 0.5
            pts.append((u + dx * ln * t - dy * half, v + dy * ln * t + dx * half))
        for i in range(7, 0, -1):
            t = i / 8
            half = wd * math.sin(math.pi * t) * 0.5
            pts.append((u + dx * ln * t + dy * half, v + dy * ln * t - dx * half))
        self.draw.polygon(pts, fill=_rgba(color), outline=_rgba(_scale(color, 0.8)))

    def shadow(self, fr: Frame, w: float, d: float, strength: float = 1.0) -> None:
        """Add a soft contact shadow for a footprint w x d."""
        corners = [fr.world(sx * w / 2, 0, sz * d / 2) for sx in (-1, 1) for sz in (-1, 1)]
        for layer, grow, value in ((self.soft, 1.12, 75), (self.contact, 0.92, 120)):
            pts = [
                self.shadow_cam.project(
                    (fr.x + (p[0] - fr.x) * grow, 0.0, fr.z + (p[2] - fr.z) * grow)
                )
                for p in corners
            ]
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            ImageDraw.Draw(layer).ellipse(
                (min(xs), min(ys), max(xs), max(ys) + 0.5), fill=int(value * strength)
            )


PieceFn = Callable[[Renderer, Frame, float, float, Palette, random.Random], None]


@dataclass(frozen=True)
class Placed:
    """One piece in a layout: where it stands, its footprint and how it is drawn."""

    draw: PieceFn
    x: float
    z: float
    w: float
    d: float
    yaw: float = 0.0
    kind: Kind = "floor"
    optional: bool = False
    seed: int = 0


def _legs(
    r: Renderer,
    fr: Frame,
    x0: float,
    x1: float,
    z0: float,
    z1: float,
    h: float,
    p: Palette,
    inset: float = 0.04,
    color: RGB | None = None,
) -> None:
    """Four legs under a footprint, drawn back pair first, in the style's leg shape."""
    wood = color or p.wood
    if p.legs == "plinth":
        # A tall plinth reads as a solid block base, a low one as a shadowed recess.
        tone = _scale(wood, 0.45) if h <= 0.12 else _scale(wood, 0.9)
        r.box(fr, x0 + 0.06, x1 - 0.06, 0.0, h, z0 + 0.06, z1 - 0.06, tone)
        return
    corners = [
        (x0 + inset, z1 - inset),
        (x1 - inset, z1 - inset),
        (x0 + inset, z0 + inset),
        (x1 - inset, z0 + inset),
    ]
    for lx, lz in corners:
        if p.legs == "chunky":
            t = 0.045 * p.chunk
            r.box(fr, lx - t, lx + t, 0.0, h, lz - t, lz + t, _scale(wood, 0.85))
            continue
        top = fr.world(lx, h, lz)
        if p.legs == "tapered":
            sx = 0.05 if lx > 0 else -0.05
            sz = 0.03 if lz > 0 else -0.03
            r.beam(top, fr.world(lx + sx, 0.0, lz + sz), 0.045, 0.02, _scale(wood, 0.8))
        elif p.legs == "metal":
            r.beam(top, fr.world(lx, 0.0, lz), 0.025, 0.025, p.metal)
        elif p.legs == "turned":
            r.beam(top, fr.world(lx, 0.0, lz), 0.05, 0.035, _scale(wood, 0.8))
            r.blob(fr.world(lx, h * 0.55, lz), 0.035, 0.02, _scale(wood, 0.9))
        else:
            r.beam(top, fr.world(lx, 0.0, lz), 0.04, 0.03, _scale(wood, 0.85))


def _leg_height(p: Palette, default: float) -> float:
    return {"plinth": 0.06, "chunky": default * 0.8}.get(p.legs, default)


def _pillow(r: Renderer, centre: Vec3, w: float, h: float, color: RGB, tilt: float) -> None:
    r.blob(centre, w / 2, h / 2, _scale(color, 0.82), angle=tilt, power=3.2)
    lifted = (centre[0] - w * 0.04, centre[1] + h * 0.05, centre[2])
    r.blob(lifted, w * 0.42, h * 0.4, color, angle=tilt, power=2.6)


def _sofa(r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random) -> None:
    """A sofa or armchair: backrest, arms, base, seat and back cushions, throw pillows."""
    x0, x1, z0, z1 = -w / 2, w / 2, -d / 2, d / 2
    leg = _leg_height(p, 0.13)
    arm_w = 0.17 * p.chunk
    seat, base_top = 0.46, 0.33
    back_top = 0.84 if p.legs != "tapered" else 0.78
    back_d = 0.2
    arm_top = 0.62 if p.legs != "tapered" else 0.58
    fabric = p.fabric
    _legs(r, fr, x0 + 0.02, x1 - 0.02, z0 + 0.02, z1 - 0.02, leg, p)
    r.box(fr, x0, x1, leg, back_top, z1 - back_d, z1, _scale(fabric, 0.92), gradient=0.12)
    arms = [(x0, x0 + arm_w, (1.0, 0.0)), (x1 - arm_w, x1, (-1.0, 0.0))]
    early = [
        a
        for a in arms
        if r.faces_camera(fr, ((a[0] + a[1]) / 2 + a[2][0] * arm_w / 2, arm_top, 0.0), a[2])
    ]
    for ax0, ax1, _ in early:
        r.box(fr, ax0, ax1, leg, arm_top, z0, z1 - 0.02, fabric, round_front=0.04)
    r.box(
        fr,
        x0 + arm_w,
        x1 - arm_w,
        leg,
        base_top,
        z0,
        z1 - back_d,
        _scale(fabric, 0.9),
        gradient=0.15,
    )
    inner = w - 2 * arm_w
    seats = max(1, round(inner / 0.75))
    cw = inner / seats
    cushions = [x0 + arm_w + i * cw for i in range(seats)]
    cushions.sort(key=lambda cx: -abs(fr.world(cx + cw / 2, 0, 0)[0]))
    for cx in cushions:
        r.box(
            fr,
            cx + 0.01,
            cx + cw - 0.01,
            base_top + 0.12,
            back_top - 0.04,
            z1 - back_d - 0.16,
            z1 - back_d,
            _scale(fabric, 1.02),
            round_front=0.06,
        )
    for cx in cushions:
        r.box(
            fr,
            cx + 0.01,
            cx + cw - 0.01,
            base_top,
            seat,
            z0 + 0.01,
            z1 - back_d - 0.12,
            fabric,
            round_front=0.05,
            gradient=0.1,
        )
    if w > 1.2:
        colors = [p.accent, p.linen] if rng.random() < 0.6 else [p.linen, p.accent]
        for i, side in enumerate((-1, 1)):
            px = side * (inner / 2 - 0.26)
            cz = z1 - back_d - 0.22
            _pillow(
                r,
                fr.world(px, seat + 0.2, cz),
                0.44,
                0.4,
                colors[i % 2],
                side * rng.uniform(0.08, 0.2),
            )
    elif rng.random() < 0.7:
        _pillow(
            r,
            fr.world(0, seat + 0.18, z1 - back_d - 0.2),
            0.38,
            0.34,
            p.accent,
            rng.uniform(-0.15, 0.15),
        )
    for a in arms:
        if a not in early:
            r.box(fr, a[0], a[1], leg, arm_top, z0, z1 - 0.02, fabric, round_front=0.04)


def _book_stack(
    r: Renderer, fr: Frame, lx: float, lz: float, y: float, p: Palette, rng: random.Random
) -> float:
    colors = [p.accent, p.linen, _scale(p.fabric, 0.8), (60, 60, 64)]
    rng.shuffle(colors)
    for c in colors[: rng.randint(2, 3)]:
        bw = rng.uniform(0.2, 0.28)
        r.box(fr, lx - bw / 2, lx + bw / 2, y, y + 0.035, lz - 0.08, lz + 0.08, c)
        y += 0.035
    return y


def _vase(
    r: Renderer,
    fr: Frame,
    lx: float,
    lz: float,
    y: float,
    color: RGB,
    height: float,
    rng: random.Random,
    stems: bool = True,
) -> None:
    r.cylinder(fr, lx, lz, 0.05, 0.035, y, y + height, color)
    if stems:
        top = fr.world(lx, y + height, lz)
        for _ in range(5):
            a = rng.uniform(-0.6, 0.6)
            r.leaf(top, rng.uniform(0.18, 0.3), 0.05, a, rng.choice(_LEAF_GREENS))


def _coffee_table(
    r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random
) -> None:
    """A coffee table with a shelf or pedestal and a little decor on top."""
    h = 0.42
    top_t = 0.05 * p.chunk
    if p.round_tables:
        radius = min(w, d) / 2
        r.cylinder(fr, 0, 0, radius * 0.35, radius * 0.22, 0.0, h - top_t, _scale(p.wood, 0.8))
        r.cylinder(fr, 0, 0, radius, radius, h - top_t, h, p.wood)
        _vase(r, fr, radius * 0.3, 0.0, h, p.linen, 0.16, rng)
        _book_stack(r, fr, -radius * 0.35, 0.0, h, p, rng)
        return
    _legs(r, fr, -w / 2, w / 2, -d / 2, d / 2, h - top_t, p, inset=0.05)
    if p.legs not in ("plinth", "tapered"):
        r.box(
            fr,
            -w / 2 + 0.05,
            w / 2 - 0.05,
            0.1,
            0.13,
            -d / 2 + 0.05,
            d / 2 - 0.05,
            _scale(p.wood, 0.85),
        )
    r.box(fr, -w / 2, w / 2, h - top_t, h, -d / 2, d / 2, p.wood)
    side = rng.choice((-1, 1))
    _book_stack(r, fr, side * w * 0.25, 0.0, h, p, rng)
    if rng.random() < 0.6:
        r.cylinder(fr, -side * w * 0.25, 0.0, 0.1, 0.13, h, h + 0.06, p.accent)
    else:
        _vase(r, fr, -side * w * 0.25, 0.0, h, p.linen, 0.18, rng)


def _floor_lamp(r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random) -> None:
    """A floor lamp: weighted base, pole and a glowing drum shade."""
    r.cylinder(fr, 0, 0, 0.15, 0.14, 0.0, 0.03, p.metal)
    r.beam(fr.world(0, 1.35, 0), fr.world(0, 0.03, 0), 0.025, 0.025, p.metal)
    shade = p.linen if rng.random() < 0.7 else _mix(p.linen, p.accent, 0.3)
    r.cylinder(fr, 0, 0, 0.22, 0.17, 1.25, 1.55, shade)
    r.blob(fr.world(0, 1.25, 0), 0.16, 0.025, (255, 244, 214))


def _plant(r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random) -> None:
    """A potted plant: tapered pot and a fan of pointed leaves."""
    pot_h = 0.34 * (w / 0.4)
    top_r = w / 2
    r.cylinder(fr, 0, 0, top_r * 0.75, top_r, 0.0, pot_h, p.pot)
    base = fr.world(0, pot_h, 0)
    # Capped so a plant near the camera stays below eye level and does not tower into the ceiling.
    height = min(1.45 - pot_h, rng.uniform(0.7, 1.05) * (w / 0.4))
    leaves = rng.randint(14, 20)
    for i in range(leaves):
        a = (i / (leaves - 1) - 0.5) * 2.2 + rng.uniform(-0.15, 0.15)
        length = height * (1.0 - 0.45 * abs(a) / 1.1) * rng.uniform(0.75, 1.0)
        r.leaf(base, length, length * rng.uniform(0.22, 0.34), a, rng.choice(_LEAF_GREENS))


def _rug(r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random) -> None:
    """A rug: a perspective quad with a style-specific pattern."""
    x0, x1, z0, z1 = -w / 2, w / 2, -d / 2, d / 2

    def rect(a: float, b: float, c: float, e: float, color: RGB) -> None:
        r.floor_poly(fr, [(a, c), (b, c), (b, e), (a, e)], color)

    pattern = p.rug_pattern
    rect(x0, x1, z0, z1, p.rug)
    if pattern == "solid":
        rect(x0 + 0.08, x1 - 0.08, z0 + 0.08, z1 - 0.08, _scale(p.rug, 0.95))
        rect(x0 + 0.1, x1 - 0.1, z0 + 0.1, z1 - 0.1, p.rug)
    elif pattern in ("border", "medallion"):
        rect(x0 + 0.1, x1 - 0.1, z0 + 0.1, z1 - 0.1, p.rug_trim)
        rect(x0 + 0.2, x1 - 0.2, z0 + 0.2, z1 - 0.2, p.rug)
        if pattern == "medallion":
            rx, rz = w * 0.22, d * 0.25
            r.floor_poly(fr, [(-rx, 0), (0, -rz), (rx, 0), (0, rz)], p.rug_trim)
            r.floor_poly(
                fr,
                [(-rx / 2, 0), (0, -rz / 2), (rx / 2, 0), (0, rz / 2)],
                _mix(p.rug, p.linen, 0.5),
            )
            for cx, cz in (
                (x0 + 0.35, z0 + 0.35),
                (x1 - 0.35, z0 + 0.35),
                (x0 + 0.35, z1 - 0.35),
                (x1 - 0.35, z1 - 0.35),
            ):
                r.floor_poly(
                    fr, [(cx - 0.1, cz), (cx, cz - 0.1), (cx + 0.1, cz), (cx, cz + 0.1)], p.rug_trim
                )
    elif pattern == "stripes":
        z = z0 + 0.15
        while z < z1 - 0.2:
            band = rng.choice((0.05, 0.08, 0.14))
            rect(x0, x1, z, min(z1 - 0.15, z + band), p.rug_trim)
            z += band + rng.choice((0.12, 0.2, 0.3))
    elif pattern in ("dots", "geometric"):
        step = 0.32
        nx, nz = int(w / step), int(d / step)
        for i in range(nx):
            for j in range(nz):
                cx = x0 + (i + 0.5) * w / nx
                cz = z0 + (j + 0.5) * d / nz
                if pattern == "dots":
                    centre = fr.world(cx, 0.0, cz)
                    color = p.rug_trim if (i + j) % 2 else p.accent
                    r.disc(centre, 0.07, color, segments=14)
                elif (i + j) % 2 == 0:
                    r.floor_poly(
                        fr,
                        [(cx - 0.1, cz), (cx, cz - 0.1), (cx + 0.1, cz), (cx, cz + 0.1)],
                        p.rug_trim,
                    )
    else:
        stripe = [p.rug_trim, p.accent, _scale(p.rug, 0.7)]
        z, i = z0 + 0.12, 0
        while z < z1 - 0.15:
            rect(x0 + 0.12, x1 - 0.12, z, z + 0.05, stripe[i % 3])
            z += 0.05
            if i % 2 == 0 and z < z1 - 0.3:
                count = max(2, int((w - 0.3) / 0.28))
                for k in range(count):
                    cx = x0 + 0.15 + (k + 0.5) * (w - 0.3) / count
                    r.floor_poly(
                        fr,
                        [
                            (cx - 0.08, z + 0.09),
                            (cx, z + 0.02),
                            (cx + 0.08, z + 0.09),
                            (cx, z + 0.16),
                        ],
                        stripe[(i + k) % 3],
                    )
            z += 0.2
            i += 1
        for side in (z0, z1):
            x = x0 + 0.03
            while x < x1:
                r.floor_poly(
                    fr,
                    [
                        (x, side),
                        (x + 0.015, side),
                        (x + 0.015, side + 0.06 * (1 if side == z1 else -1)),
                        (x, side + 0.06 * (1 if side == z1 else -1)),
                    ],
                    p.rug_trim,
                )
                x += 0.06


def _art(r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random) -> None:
    """Framed abstract art hung on the back wall (fr.z is the wall)."""
    z = fr.z - 0.01
    y0, y1 = 1.12, 1.12 + d
    x0, x1 = fr.x - w / 2, fr.x + w / 2
    off = 0.025
    u0, v1 = r.project((x0 + off, y0 - off, z))
    u1, v0 = r.project((x1 + off, y1 - off, z))
    r.draw.rectangle((u0, v0, u1, v1), fill=(30, 26, 22, 70))
    r.wall_rect(x0, x1, y0, y1, z, _scale(p.wood, 0.8) if rng.random() < 0.6 else p.metal)
    m = 0.03
    r.wall_rect(x0 + m, x1 - m, y0 + m, y1 - m, z, (244, 242, 236))
    m = 0.1
    r.wall_rect(x0 + m, x1 - m, y0 + m, y1 - m, z, _mix(p.linen, p.rug, 0.3))
    iw, ih = x1 - x0 - 2 * m, y1 - y0 - 2 * m
    colors = [p.accent, p.fabric, p.rug_trim, _scale(p.wood, 1.1)]
    rng.shuffle(colors)
    cx = x0 + m + iw * rng.uniform(0.3, 0.7)
    rad = min(iw, ih) * rng.uniform(0.2, 0.32)
    cy = y0 + m + ih * rng.uniform(0.4, 0.6)
    r.wall_rect(cx - rad, cx + rad, cy - rad, cy + rad, z, colors[0], ellipse=True)
    r.wall_rect(
        x0 + m, x0 + m + iw * rng.uniform(0.3, 0.6), y0 + m, y0 + m + ih * 0.3, z, colors[1]
    )
    r.wall_rect(x1 - m - iw * 0.15, x1 - m, y0 + m, y1 - m, z, colors[2])


def _mirror(r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random) -> None:
    """A wall mirror, round for softer styles, with a sheen across the glass."""
    z = fr.z - 0.01
    y0 = 1.05
    x0, x1, y1 = fr.x - w / 2, fr.x + w / 2, y0 + d
    round_shape = p.round_tables or p.legs == "tapered"
    frame = p.metal if p.legs in ("metal", "plinth") else p.wood
    off = 0.02
    u0, v1 = r.project((x0 + off, y0 - off, z))
    u1, v0 = r.project((x1 + off, y1 - off, z))
    drop_shadow = (30, 26, 22, 60)
    if round_shape:
        r.draw.ellipse((u0, v0, u1, v1), fill=drop_shadow)
    else:
        r.draw.rectangle((u0, v0, u1, v1), fill=drop_shadow)
    r.wall_rect(x0, x1, y0, y1, z, frame, radius=0.05, ellipse=round_shape)
    t = 0.04
    box = r.wall_rect(
        x0 + t, x1 - t, y0 + t, y1 - t, z, (200, 210, 214), radius=0.03, ellipse=round_shape
    )
    u0, v0, u1, v1 = box
    glass = Image.new("L", (max(1, int(u1 - u0)), max(1, int(v1 - v0))), 0)
    gd = ImageDraw.Draw(glass)
    if round_shape:
        gd.ellipse((0, 0, glass.width - 1, glass.height - 1), fill=255)
    else:
        gd.rectangle((0, 0, glass.width, glass.height), fill=255)
    sheen = Image.new("L", glass.size, 0)
    sd = ImageDraw.Draw(sheen)
    gw, gh = glass.size
    sd.polygon([(gw * 0.2, gh), (gw * 0.45, gh), (gw * 0.85, 0), (gw * 0.6, 0)], fill=120)
    sd.polygon([(gw * 0.5, gh), (gw * 0.56, gh), (gw * 0.96, 0), (gw * 0.9, 0)], fill=90)
    sheen = Image.composite(sheen, Image.new("L", glass.size, 0), glass)
    r.image.paste(Image.new("RGBA", glass.size, (250, 252, 252, 255)), (int(u0), int(v0)), sheen)


def _bed(r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random) -> None:
    """A bed against the wall: headboard, frame, duvet with fold and throw, pillows."""
    x0, x1, z0, z1 = -w / 2, w / 2, -d / 2, d / 2
    leg = _leg_height(p, 0.12)
    head_top = 1.15 if p.legs != "tapered" else 0.95
    headboard = p.fabric if p.upholstered_chairs or p.legs == "plinth" else p.wood
    r.box(
        fr,
        x0 - 0.05,
        x1 + 0.05,
        0.0,
        head_top,
        z1 - 0.08,
        z1,
        headboard,
        round_front=0.05 if headboard == p.fabric else 0.0,
        gradient=0.1,
    )
    _legs(r, fr, x0, x1, z0, z1 - 0.08, leg, p)
    frame_color = headboard if headboard == p.fabric else _scale(p.wood, 0.95)
    r.box(fr, x0, x1, leg, 0.34, z0, z1 - 0.08, frame_color)
    duvet = p.linen
    r.box(
        fr,
        x0 + 0.02,
        x1 - 0.02,
        0.3,
        0.56,
        z0 + 0.02,
        z1 - 0.1,
        duvet,
        round_front=0.06,
        gradient=0.12,
    )
    _pillow(r, fr.world(x0 + w * 0.27, 0.7, z1 - 0.25), w * 0.4, 0.34, _scale(p.linen, 0.97), 0.0)
    _pillow(r, fr.world(x1 - w * 0.27, 0.7, z1 - 0.25), w * 0.4, 0.34, _scale(p.linen, 0.97), 0.0)
    accents = [p.accent, p.fabric] if rng.random() < 0.5 else [p.fabric, p.accent]
    for i, side in enumerate((-1, 1)):
        _pillow(r, fr.world(side * w * 0.16, 0.66, z1 - 0.45), 0.4, 0.32, accents[i], side * 0.1)
    fold = _scale(duvet, 0.9)
    r.box(fr, x0 + 0.02, x1 - 0.02, 0.56, 0.58, z1 - 0.95, z1 - 0.7, fold)
    throw = p.accent if rng.random() < 0.5 else p.fabric
    r.box(fr, x0 - 0.01, x1 + 0.01, 0.44, 0.585, z0 + 0.01, z0 + 0.5, throw, round_front=0.03)
    r.box(fr, x0 - 0.005, x1 + 0.005, 0.586, 0.59, z0 + 0.1, z0 + 0.16, _scale(throw, 0.8))


def _table_lamp(r: Renderer, fr: Frame, lx: float, lz: float, y: float, p: Palette) -> None:
    r.cylinder(fr, lx, lz, 0.07, 0.05, y, y + 0.22, p.pot if p.pot != p.linen else p.accent)
    r.beam(fr.world(lx, y + 0.36, lz), fr.world(lx, y + 0.22, lz), 0.012, 0.012, p.metal)
    r.cylinder(fr, lx, lz, 0.15, 0.11, y + 0.3, y + 0.5, p.linen)
    r.blob(fr.world(lx, y + 0.3, lz), 0.11, 0.015, (255, 244, 214))


def _nightstand(r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random) -> None:
    """A nightstand with a drawer and a table lamp."""
    h = 0.56
    leg = _leg_height(p, 0.14)
    _legs(r, fr, -w / 2, w / 2, -d / 2, d / 2, leg, p, inset=0.03)
    r.box(fr, -w / 2, w / 2, leg, h, -d / 2, d / 2, p.wood)
    r.box(
        fr,
        -w / 2 + 0.03,
        w / 2 - 0.03,
        h - 0.17,
        h - 0.04,
        -d / 2 - 0.01,
        -d / 2,
        _scale(p.wood, 1.06),
    )
    knob = fr.world(0, h - 0.105, -d / 2 - 0.012)
    r.blob(knob, 0.014, 0.014, p.metal)
    _table_lamp(r, fr, 0.0, 0.02, h, p)


def _kitchen_island(
    r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random
) -> None:
    """An island: recessed toe-kick, cabinet doors with handles, stone top, decor."""
    x0, x1, z0, z1 = -w / 2, w / 2, -d / 2, d / 2
    cab = p.wood if p.legs in ("chunky", "turned", "tapered") else _mix(p.fabric, p.linen, 0.4)
    r.box(fr, x0 + 0.06, x1 - 0.06, 0.0, 0.1, z0 + 0.06, z1 - 0.06, _scale(cab, 0.4))
    r.box(fr, x0, x1, 0.1, 0.88, z0 + 0.04, z1 - 0.04, cab)
    doors = max(2, round(w / 0.6))
    dw = (w - 0.06) / doors
    for i in range(doors):
        dx0 = x0 + 0.03 + i * dw
        r.box(
            fr, dx0 + 0.015, dx0 + dw - 0.015, 0.14, 0.84, z0 + 0.03, z0 + 0.04, _scale(cab, 1.04)
        )
        hx = dx0 + dw - 0.08 if i % 2 == 0 else dx0 + 0.08
        r.beam(fr.world(hx, 0.74, z0 + 0.02), fr.world(hx, 0.58, z0 + 0.02), 0.015, 0.015, p.metal)
    r.box(fr, x0 - 0.03, x1 + 0.03, 0.88, 0.93, z0 - 0.03, z1 + 0.03, p.stone)
    side = rng.choice((-1, 1))
    bowl = fr.world(side * w * 0.28, 0.93, 0.0)
    r.cylinder(fr, side * w * 0.28, 0.0, 0.08, 0.14, 0.93, 0.99, p.linen)
    for k in range(4):
        fx = bowl[0] + (k - 1.5) * 0.055
        r.blob(
            (fx, 1.01 + (k % 2) * 0.02, bowl[2]),
            0.035,
            0.035,
            ((206, 60, 40), (236, 170, 40), (120, 170, 60), (220, 110, 40))[k],
        )
    _vase(r, fr, -side * w * 0.3, 0.05, 0.93, p.pot, 0.2, rng)


def _bar_stool(r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random) -> None:
    """A bar stool: splayed legs, footrest ring, padded round seat."""
    seat = 0.68
    frame = p.metal if p.legs in ("metal", "plinth") else p.wood
    for lx, lz in ((-0.13, 0.13), (0.13, 0.13), (-0.13, -0.13), (0.13, -0.13)):
        r.beam(
            fr.world(lx * 0.7, seat - 0.03, lz * 0.7),
            fr.world(lx, 0.0, lz),
            0.03,
            0.025,
            _scale(frame, 0.85),
        )
    ring = 0.25
    for a, b in (((-0.11, 0.11), (0.11, 0.11)), ((-0.11, -0.11), (0.11, -0.11))):
        r.beam(fr.world(a[0], ring, a[1]), fr.world(b[0], ring, b[1]), 0.02, 0.02, frame)
    r.cylinder(fr, 0, 0, 0.19, 0.2, seat - 0.05, seat, p.fabric if p.upholstered_chairs else p.wood)


def _pendant(r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random) -> None:
    """A pendant light hanging from the ceiling on a cord."""
    y = 1.72
    r.beam(fr.world(0, CEILING_M, 0), fr.world(0, y + 0.2, 0), 0.008, 0.008, (40, 40, 40))
    color = p.metal if p.legs != "slim" else p.accent
    r.cylinder(fr, 0, 0, 0.2, 0.06, y, y + 0.2, color)
    r.blob(fr.world(0, y, 0), 0.15, 0.03, (255, 240, 200))


def _chair(r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random) -> None:
    """A dining chair whose seat faces local -z; parts are painted farthest first."""
    seat = 0.46
    back_top = 0.9
    frame = p.metal if p.legs == "metal" else p.wood
    legs_p = replace(p, legs="slim") if p.legs == "plinth" else p
    _legs(r, fr, -w / 2, w / 2, -d / 2, d / 2, seat - 0.05, legs_p, inset=0.03, color=frame)

    def seat_part() -> None:
        r.box(
            fr,
            -w / 2,
            w / 2,
            seat - 0.05,
            seat,
            -d / 2,
            d / 2 - 0.02,
            p.fabric if p.upholstered_chairs else frame,
        )

    def back_part() -> None:
        zb = d / 2
        if p.upholstered_chairs:
            r.box(
                fr,
                -w / 2 + 0.01,
                w / 2 - 0.01,
                seat,
                back_top,
                zb - 0.07,
                zb,
                p.fabric,
                round_front=0.04,
            )
            return
        for sx in (-1, 1):
            r.beam(
                fr.world(sx * (w / 2 - 0.025), back_top, zb - 0.03),
                fr.world(sx * (w / 2 - 0.025), seat, zb - 0.03),
                0.035,
                0.035,
                frame,
            )
        r.box(fr, -w / 2, w / 2, back_top - 0.14, back_top, zb - 0.05, zb - 0.01, frame)
        r.box(
            fr, -w / 2 + 0.03, w / 2 - 0.03, seat + 0.16, seat + 0.22, zb - 0.045, zb - 0.015, frame
        )

    seat_dist = math.dist((0.0, 0.0), (fr.world(0, 0, 0)[0], fr.world(0, 0, 0)[2]))
    back_pt = fr.world(0, 0, d / 2)
    back_dist = math.dist((0.0, 0.0), (back_pt[0], back_pt[2]))
    parts = [(back_dist, back_part), (seat_dist, seat_part)]
    for _, part in sorted(parts, key=lambda t: -t[0]):
        part()


def _dining_table(
    r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random
) -> None:
    """A dining table, rectangular or round with a pedestal, with a centrepiece."""
    h = 0.76
    t = 0.045 * p.chunk
    if p.round_tables:
        radius = min(w, d) / 2
        r.cylinder(fr, 0, 0, 0.3, 0.22, 0.0, 0.05, _scale(p.wood, 0.8))
        r.cylinder(fr, 0, 0, 0.08, 0.08, 0.05, h - t, _scale(p.wood, 0.85))
        r.cylinder(fr, 0, 0, radius, radius, h - t, h, p.wood)
    else:
        _legs(
            r,
            fr,
            -w / 2,
            w / 2,
            -d / 2,
            d / 2,
            h - t,
            replace(p, legs="slim") if p.legs == "plinth" else p,
            inset=0.07,
        )
        r.box(fr, -w / 2, w / 2, h - t, h, -d / 2, d / 2, p.wood)
    _vase(r, fr, 0.0, 0.0, h, p.pot, 0.24, rng)


def _sideboard(r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random) -> None:
    """A sideboard or media console with doors, standing against the wall."""
    leg = _leg_height(p, 0.16)
    h = 0.8
    _legs(r, fr, -w / 2, w / 2, -d / 2, d / 2, leg, p, inset=0.04)
    r.box(fr, -w / 2, w / 2, leg, h, -d / 2, d / 2, p.wood)
    doors = max(2, round(w / 0.45))
    dw = (w - 0.04) / doors
    for i in range(doors):
        dx0 = -w / 2 + 0.02 + i * dw
        r.box(
            fr,
            dx0 + 0.01,
            dx0 + dw - 0.01,
            leg + 0.03,
            h - 0.03,
            -d / 2 - 0.01,
            -d / 2,
            _scale(p.wood, 1.05 if i % 2 else 0.97),
        )
        r.blob(fr.world(dx0 + dw / 2, h - 0.12, -d / 2 - 0.012), 0.012, 0.012, p.metal)
    side = rng.choice((-1, 1))
    _table_lamp(r, fr, side * w * 0.3, 0.0, h, p)
    _vase(r, fr, -side * w * 0.25, 0.0, h, p.pot, 0.26, rng)


def _desk(r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random) -> None:
    """A desk facing the camera: pedestal, modesty panel, an open laptop, lamp and decor."""
    h = 0.75
    t = 0.04 * p.chunk
    side = rng.choice((-1, 1))
    legs_p = replace(p, legs="slim") if p.legs == "plinth" else p
    _legs(r, fr, -w / 2, w / 2, -d / 2, d / 2, h - t, legs_p, inset=0.04)
    px0, px1 = (w / 2 - 0.42, w / 2 - 0.02) if side > 0 else (-w / 2 + 0.02, -w / 2 + 0.42)
    r.box(fr, px0, px1, 0.05, h - t, -d / 2 + 0.04, d / 2 - 0.04, _scale(p.wood, 0.95))
    r.box(
        fr,
        -w / 2 + 0.05,
        w / 2 - 0.05,
        h - t - 0.3,
        h - t,
        -d / 2 + 0.1,
        -d / 2 + 0.12,
        _scale(p.wood, 0.9),
    )
    r.box(fr, -w / 2, w / 2, h - t, h, -d / 2, d / 2, p.wood)
    shell = (182, 184, 188)
    r.box(fr, -0.17, 0.17, h, h + 0.015, -0.02, 0.22, shell)
    r.solid(
        prism_faces(
            fr,
            [(h + 0.015, -0.04), (h + 0.24, -0.08), (h + 0.24, -0.07), (h + 0.015, -0.03)],
            -0.17,
            0.17,
        ),
        shell,
    )
    _book_stack(r, fr, side * (w / 2 - 0.45), -0.05, h, p, rng)
    _table_lamp(r, fr, side * (w / 2 - 0.18), 0.1, h, p)
    _vase(r, fr, -side * (w / 2 - 0.15), 0.05, h, p.pot, 0.12, rng)


def _office_chair(
    r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random
) -> None:
    """A swivel chair: five-star base on casters, gas lift, seat and a tall backrest."""
    dark = (44, 44, 46)
    fabric = _mix(p.fabric, (40, 40, 44), 0.45)
    for k in range(5):
        a = 2 * math.pi * k / 5 + 0.3
        end = fr.world(0.3 * math.cos(a), 0.06, 0.3 * math.sin(a))
        r.beam(fr.world(0, 0.1, 0), end, 0.04, 0.03, dark)
        r.blob((end[0], 0.03, end[2]), 0.03, 0.03, (30, 30, 30))
    r.beam(fr.world(0, 0.42, 0), fr.world(0, 0.1, 0), 0.05, 0.05, (120, 120, 124))

    def seat_part() -> None:
        r.box(fr, -0.25, 0.25, 0.42, 0.5, -0.24, 0.22, fabric, round_front=0.05)

    def back_part() -> None:
        r.beam(fr.world(0, 0.62, 0.24), fr.world(0, 0.46, 0.22), 0.05, 0.05, dark)
        r.box(fr, -0.25, 0.25, 0.58, 1.16, 0.22, 0.28, fabric, round_front=0.08, gradient=0.15)

    back = fr.world(0, 0, 0.25)
    if math.hypot(back[0], back[2]) > math.hypot(fr.x, fr.z):
        back_part()
        seat_part()
    else:
        seat_part()
        back_part()


def _bookshelf(r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random) -> None:
    """A tall bookshelf with shelves of books and a few objects."""
    h = 1.8
    t = 0.03 * p.chunk
    frame = p.wood
    r.box(fr, -w / 2, w / 2, 0.0, h, d / 2 - 0.02, d / 2, _scale(frame, 0.7))
    shelves = 5
    gap = (h - t) / shelves
    for i in range(shelves):
        y = i * gap
        r.box(fr, -w / 2, w / 2, y, y + t, -d / 2, d / 2 - 0.02, frame)
        x = -w / 2 + t + 0.02
        end = w / 2 - t - 0.02
        colors = [p.accent, p.linen, p.fabric, (70, 70, 74), p.rug_trim, (180, 60, 50)]
        while x < end - 0.05:
            if rng.random() < 0.2:
                x += rng.uniform(0.08, 0.16)
                continue
            bw = rng.uniform(0.025, 0.05)
            bh = gap * rng.uniform(0.55, 0.85)
            r.box(
                fr,
                x,
                min(end, x + bw),
                y + t,
                y + t + bh,
                -d / 2 + 0.05,
                d / 2 - 0.04,
                rng.choice(colors),
                edge=False,
            )
            x += bw + 0.004
    r.box(fr, -w / 2, w / 2, h - t, h, -d / 2, d / 2, frame)
    for sx0, sx1 in ((-w / 2, -w / 2 + t), (w / 2 - t, w / 2)):
        r.box(fr, sx0, sx1, 0.0, h, -d / 2, d / 2, _scale(frame, 0.95))


def _console(r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random) -> None:
    """A slim console table with a lower shelf, a lamp or vase and a tray."""
    h = 0.8
    t = 0.04 * p.chunk
    legs_p = replace(p, legs="slim") if p.legs == "plinth" else p
    _legs(r, fr, -w / 2, w / 2, -d / 2, d / 2, h - t, legs_p, inset=0.03)
    r.box(
        fr,
        -w / 2 + 0.03,
        w / 2 - 0.03,
        0.16,
        0.19,
        -d / 2 + 0.03,
        d / 2 - 0.03,
        _scale(p.wood, 0.9),
    )
    for k in range(2):
        bx = -w / 4 + k * w / 2
        r.box(fr, bx - 0.16, bx + 0.16, 0.19, 0.4, -0.12, 0.12, _mix(p.rug, p.wood, 0.4))
    r.box(fr, -w / 2, w / 2, h - t, h, -d / 2, d / 2, p.wood)
    side = rng.choice((-1, 1))
    _table_lamp(r, fr, side * w * 0.3, 0.0, h, p)
    _vase(r, fr, -side * w * 0.28, 0.0, h, p.pot, 0.22, rng)


def _bench(r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random) -> None:
    """A bench with a cushion and a throw pillow."""
    h = 0.46
    _legs(r, fr, -w / 2, w / 2, -d / 2, d / 2, h - 0.1, p, inset=0.04)
    r.box(fr, -w / 2, w / 2, h - 0.1, h - 0.05, -d / 2, d / 2, p.wood)
    r.box(
        fr,
        -w / 2 + 0.02,
        w / 2 - 0.02,
        h - 0.05,
        h + 0.02,
        -d / 2 + 0.02,
        d / 2 - 0.02,
        p.fabric,
        round_front=0.03,
    )
    side = rng.choice((-1, 1))
    _pillow(
        r, fr.world(side * (w / 2 - 0.25), h + 0.17, d / 2 - 0.1), 0.36, 0.32, p.accent, side * 0.15
    )


def _vanity(r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random) -> None:
    """A bathroom vanity: drawers, stone top, vessel basin and tap."""
    leg = _leg_height(p, 0.18)
    h = 0.86
    cab = p.wood if p.legs != "plinth" else _mix(p.fabric, p.linen, 0.3)
    _legs(r, fr, -w / 2, w / 2, -d / 2, d / 2, leg, p, inset=0.04)
    r.box(fr, -w / 2, w / 2, leg, h - 0.03, -d / 2, d / 2, cab)
    rows = 2
    rh = (h - 0.03 - leg - 0.04) / rows
    for k in range(rows):
        y = leg + 0.02 + k * rh
        r.box(
            fr,
            -w / 2 + 0.03,
            w / 2 - 0.03,
            y + 0.01,
            y + rh - 0.01,
            -d / 2 - 0.01,
            -d / 2,
            _scale(cab, 1.05),
        )
        r.beam(
            fr.world(-0.12, y + rh * 0.6, -d / 2 - 0.015),
            fr.world(0.12, y + rh * 0.6, -d / 2 - 0.015),
            0.015,
            0.015,
            p.metal,
        )
    r.box(fr, -w / 2 - 0.02, w / 2 + 0.02, h - 0.03, h, -d / 2 - 0.02, d / 2, p.stone)
    r.cylinder(fr, 0, 0.0, 0.14, 0.2, h, h + 0.13, (246, 246, 244))
    r.disc(fr.world(0, h + 0.13, 0.0), 0.165, (214, 218, 220))
    r.beam(fr.world(0, h + 0.3, 0.17), fr.world(0, h, 0.17), 0.025, 0.025, p.metal)
    r.beam(fr.world(0, h + 0.3, 0.17), fr.world(0, h + 0.28, 0.08), 0.02, 0.02, p.metal)
    _vase(r, fr, w / 2 - 0.12, 0.05, h, p.pot, 0.14, rng)


def oval_faces(
    fr: Frame,
    rx0: float,
    rz0: float,
    rx1: float,
    rz1: float,
    y0: float,
    y1: float,
    power: float = 2.0,
    segments: int = 28,
) -> list[Face]:
    """A vertical solid on a superellipse footprint (local radii at bottom and top)."""
    rings: list[list[Vec3]] = [[], []]
    for i in range(segments):
        t = 2 * math.pi * i / segments
        ct, st = math.cos(t), math.sin(t)
        ex = math.copysign(abs(ct) ** (2 / power), ct)
        ez = math.copysign(abs(st) ** (2 / power), st)
        rings[0].append(fr.world(rx0 * ex, y0, rz0 * ez))
        rings[1].append(fr.world(rx1 * ex, y1, rz1 * ez))
    faces = [rings[0], rings[1][::-1]]
    for i in range(segments):
        j = (i + 1) % segments
        faces.append([rings[0][i], rings[0][j], rings[1][j], rings[1][i]])
    return faces


def _bathtub(r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random) -> None:
    """A freestanding oval bathtub with a floor-standing tap."""
    h = 0.58
    white = (246, 246, 244)
    lift = 0.0
    if p.legs in ("turned", "chunky", "tapered"):
        lift = 0.1
        for sx in (-1, 1):
            for sz in (-1, 1):
                r.blob(fr.world(sx * w * 0.36, 0.05, sz * d * 0.3), 0.04, 0.05, p.metal)
    tap_x = -w / 2 - 0.12
    r.beam(fr.world(tap_x, h + 0.28, 0.0), fr.world(tap_x, 0.0, 0.0), 0.03, 0.03, p.metal)
    r.beam(
        fr.world(tap_x, h + 0.28, 0.0), fr.world(tap_x + 0.18, h + 0.24, 0.0), 0.025, 0.02, p.metal
    )
    r.solid(
        oval_faces(fr, w * 0.42, d * 0.4, w / 2, d / 2, lift, h, power=2.6),
        white,
        edge=False,
        gradient=0.12,
    )
    r.floor_poly(fr, _superellipse(w / 2 - 0.05, d / 2 - 0.05, 2.6), (200, 206, 210), y=h)
    r.floor_poly(
        fr,
        [(x * 0.9 + 0.03, z * 0.8 + 0.03) for x, z in _superellipse(w / 2 - 0.1, d / 2 - 0.1, 2.6)],
        (222, 228, 232),
        y=h,
    )


def _superellipse(rx: float, rz: float, power: float, n: int = 28) -> list[tuple[float, float]]:
    pts = []
    for i in range(n):
        t = 2 * math.pi * i / n
        ct, st = math.cos(t), math.sin(t)
        pts.append(
            (
                rx * math.copysign(abs(ct) ** (2 / power), ct),
                rz * math.copysign(abs(st) ** (2 / power), st),
            )
        )
    return pts


def _towel_stand(
    r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random
) -> None:
    """A towel ladder leaning on the wall with a striped towel over one rung."""
    h = 1.5
    frame = p.wood if p.legs not in ("metal", "plinth") else p.metal
    for sx in (-1, 1):
        r.beam(fr.world(sx * w / 2, h, d / 2), fr.world(sx * w / 2, 0.0, -d / 2), 0.04, 0.04, frame)
    rungs = 5
    for k in range(1, rungs + 1):
        y = h * k / (rungs + 0.3)
        z = -d / 2 + d * y / h
        r.beam(fr.world(-w / 2, y, z), fr.world(w / 2, y, z), 0.028, 0.028, _scale(frame, 0.9))
    towel = p.accent if rng.random() < 0.5 else p.linen
    stripe = p.linen if towel == p.accent else p.accent
    y_top = h * 4 / (rungs + 0.3)
    z = -d / 2 + d * y_top / h - 0.03
    r.box(fr, -w / 2 + 0.06, w / 2 - 0.06, y_top - 0.55, y_top + 0.02, z - 0.02, z, towel)
    r.box(
        fr,
        -w / 2 + 0.06,
        w / 2 - 0.06,
        y_top - 0.45,
        y_top - 0.41,
        z - 0.021,
        z - 0.02,
        stripe,
        edge=False,
    )


def _stool(r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random) -> None:
    """A small round stool with folded towels on it."""
    h = 0.45
    for k in range(3):
        a = 2 * math.pi * k / 3 + 0.5
        r.beam(
            fr.world(0.1 * math.cos(a), h - 0.04, 0.1 * math.sin(a)),
            fr.world(0.16 * math.cos(a), 0.0, 0.16 * math.sin(a)),
            0.03,
            0.025,
            _scale(p.wood, 0.85),
        )
    r.cylinder(fr, 0, 0, w / 2, w / 2, h - 0.04, h, p.wood)
    y = h
    for c in (p.linen, p.accent, p.linen):
        r.box(fr, -0.13, 0.13, y, y + 0.05, -0.1, 0.1, c, round_front=0.02)
        y += 0.05


def _patio_table(
    r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random
) -> None:
    """A round outdoor table on a pedestal with a lantern."""
    h = 0.74
    radius = w / 2
    frame = p.metal if p.legs != "chunky" else p.wood
    for k in range(4):
        a = math.pi / 4 + k * math.pi / 2
        r.beam(
            fr.world(0, 0.25, 0),
            fr.world(0.3 * math.cos(a), 0.0, 0.3 * math.sin(a)),
            0.04,
            0.03,
            frame,
        )
    r.cylinder(fr, 0, 0, 0.05, 0.05, 0.2, h - 0.04, frame)
    r.cylinder(fr, 0, 0, radius, radius, h - 0.04, h, p.wood if rng.random() < 0.5 else p.stone)
    r.box(fr, -0.07, 0.07, h, h + 0.22, -0.07, 0.07, (238, 232, 210))
    r.box(fr, -0.08, 0.08, h + 0.22, h + 0.25, -0.08, 0.08, p.metal)


def _lounge_chair(
    r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random
) -> None:
    """A chaise lounge: long low frame with a reclined back, cushion and pillow."""
    frame = p.wood if p.legs != "metal" else p.metal
    z0, z1 = -d / 2, d / 2
    _legs(r, fr, -w / 2, w / 2, z0, z1, 0.2, replace(p, legs="slim"), inset=0.04, color=frame)
    hinge = z1 - 0.65
    r.solid(
        prism_faces(
            fr,
            [(0.3, hinge), (0.36, hinge), (0.85, z1 - 0.02), (0.78, z1)],
            -w / 2 + 0.02,
            w / 2 - 0.02,
        ),
        p.fabric,
    )
    r.box(fr, -w / 2, w / 2, 0.2, 0.28, z0, z1, frame)
    r.box(fr, -w / 2 + 0.02, w / 2 - 0.02, 0.28, 0.36, z0 + 0.02, hinge, p.fabric, round_front=0.03)
    _pillow(r, fr.world(0, 0.62, z1 - 0.25), 0.4, 0.28, p.accent, rng.uniform(-0.1, 0.1))


def _planter(r: Renderer, fr: Frame, w: float, d: float, p: Palette, rng: random.Random) -> None:
    """A square planter box with a shrub or grasses."""
    h = 0.45
    r.box(fr, -w / 2, w / 2, 0.0, h, -d / 2, d / 2, p.pot if p.pot != p.linen else p.wood)
    base = fr.world(0, h, 0)
    if rng.random() < 0.5:
        for _ in range(22):
            a = rng.uniform(-1.0, 1.0)
            r.leaf(base, rng.uniform(0.4, 0.7), 0.05, a, rng.choice(_LEAF_GREENS))
    else:
        for k in range(9):
            cx = base[0] + rng.uniform(-w * 0.3, w * 0.3)
            cy = h + 0.2 + rng.uniform(0.0, 0.25)
            r.blob((cx, cy, base[2]), w * 0.28, w * 0.24, _LEAF_GREENS[k % 4])


@dataclass(frozen=True)
class Room:
    """Where the floor is, in metres, as far as the layouts are concerned."""

    back: float
    near: float

    def fits(self, cam: Camera, x: float, z: float, w: float) -> float:
        """Shift x so a piece of width w at depth z stays clear of the side margins."""
        limit = max(0.0, (0.5 - SIDE_MARGIN) * cam.width / cam.ppm(z) - w / 2)
        return max(-limit, min(limit, x))


Layout = Callable[[random.Random, Palette, Room], list[Placed]]


def _seeds(rng: random.Random) -> int:
    return rng.getrandbits(31)


def _living_room(rng: random.Random, p: Palette, room: Room) -> list[Placed]:
    flip = rng.choice((-1, 1))
    shift = rng.uniform(-0.3, 0.3)
    sofa_w = rng.choice((2.1, 2.3, 2.4))
    sofa_z = room.back - 1.1 - rng.uniform(0.0, 0.4)
    table_z = sofa_z - 1.2
    chair_x = shift + flip * (sofa_w / 2 + 0.45)
    return [
        Placed(_rug, shift, table_z + 0.2, sofa_w + 0.9, 2.5, kind="rug"),
        Placed(_art, shift, room.back, rng.uniform(0.9, 1.3), 0.62, kind="wall", optional=True),
        Placed(_plant, chair_x + flip * 0.2, room.back - 0.45, 0.45, 0.45, optional=True),
        Placed(_sofa, shift, sofa_z, sofa_w, 0.95),
        Placed(
            _floor_lamp, shift - flip * (sofa_w / 2 + 0.35), sofa_z + 0.15, 0.4, 0.4, optional=True
        ),
        Placed(_coffee_table, shift, table_z, 1.2, 0.65),
        Placed(_sofa, chair_x, table_z - 0.4, 0.9, 0.88, yaw=flip * 0.6),
    ]


def _bedroom(rng: random.Random, p: Palette, room: Room) -> list[Placed]:
    bed_w = rng.choice((1.7, 1.9))
    bed_d = 2.15
    shift = rng.uniform(-0.35, 0.35)
    bed_z = room.back - 0.02 - bed_d / 2
    stand_z = room.back - 0.27
    side = rng.choice((-1, 1))
    items = [
        Placed(_rug, shift, bed_z - 0.55, bed_w + 1.2, 2.3, kind="rug", optional=True),
        Placed(_art, shift, room.back, rng.uniform(0.8, 1.2), 0.5, kind="wall", optional=True),
        Placed(_bed, shift, bed_z, bed_w, bed_d),
        Placed(_nightstand, shift - bed_w / 2 - 0.37, stand_z, 0.52, 0.42),
        Placed(_nightstand, shift + bed_w / 2 + 0.37, stand_z, 0.52, 0.42, optional=True),
        Placed(_bench, shift, bed_z - bed_d / 2 - 0.35, bed_w - 0.3, 0.42, optional=True),
        Placed(
            _sofa,
            shift + side * (bed_w / 2 + 1.0),
            bed_z - 1.0,
            0.8,
            0.8,
            yaw=side * 0.7,
            optional=True,
        ),
        Placed(_plant, shift - side * (bed_w / 2 + 0.8), bed_z - 0.6, 0.42, 0.42, optional=True),
    ]
    return items


def _kitchen(rng: random.Random, p: Palette, room: Room) -> list[Placed]:
    w = rng.choice((2.1, 2.4, 2.6))
    shift = rng.uniform(-0.3, 0.3)
    z = room.back - 2.3 - rng.uniform(0.0, 0.3)
    stools = max(2, round(w / 0.62))
    items = [Placed(_kitchen_island, shift, z, w, 1.0)]
    for i in range(stools):
        sx = shift + (i - (stools - 1) / 2) * (w / stools)
        items.append(Placed(_bar_stool, sx, z - 0.78, 0.42, 0.42))
    pendants = rng.choice((2, 3))
    for i in range(pendants):
        px = shift + (i - (pendants - 1) / 2) * (w / pendants)
        items.append(Placed(_pendant, px, z, 0.4, 0.4, kind="ceiling", optional=True))
    side = rng.choice((-1, 1))
    items.append(Placed(_plant, shift + side * (w / 2 + 0.65), z + 0.5, 0.5, 0.5, optional=True))
    return items


def _bathroom(rng: random.Random, p: Palette, room: Room) -> list[Placed]:
    side = rng.choice((-1, 1))
    vw = rng.choice((1.0, 1.2))
    vx = side * rng.uniform(0.9, 1.2)
    return [
        Placed(_rug, vx, room.back - 1.05, 1.0, 0.65, kind="rug"),
        Placed(_mirror, vx, room.back, min(0.8, vw - 0.25), 0.64, kind="wall"),
        Placed(_vanity, vx, room.back - 0.27, vw, 0.5),
        Placed(_bathtub, -side * 0.5, room.back - 1.5, 1.7, 0.8),
        Placed(_towel_stand, -side * 1.75, room.back - 0.25, 0.5, 0.4),
        Placed(_stool, -side * 1.55, room.back - 2.3, 0.36, 0.36, optional=True),
        Placed(_plant, side * 1.45, room.back - 2.3, 0.5, 0.5, optional=True),
    ]


def _dining_room(rng: random.Random, p: Palette, room: Room) -> list[Placed]:
    shift = rng.uniform(-0.3, 0.3)
    z = room.back - 2.4 - rng.uniform(0.0, 0.3)
    tw, td = (1.3, 1.3) if p.round_tables else (rng.choice((1.8, 2.0)), 1.0)
    items = [
        Placed(_rug, shift, z, tw + 1.4, td + 1.4, kind="rug", optional=p.sparse),
        Placed(
            _art, shift + rng.uniform(-0.3, 0.3), room.back, 1.0, 0.55, kind="wall", optional=True
        ),
        Placed(_sideboard, shift + rng.uniform(-0.4, 0.4), room.back - 0.25, 1.7, 0.45),
        Placed(_dining_table, shift, z, tw, td),
    ]
    per_side = 1 if p.round_tables else 2
    for i in range(per_side):
        cx = shift + (i - (per_side - 1) / 2) * 0.8
        items.append(Placed(_chair, cx, z + td / 2 + 0.1, 0.48, 0.5))
        if rng.random() < 0.5:
            items.append(
                Placed(_chair, cx, z - td / 2 - 0.12, 0.48, 0.5, yaw=math.pi, optional=True)
            )
    for sx in (-1, 1):
        items.append(
            Placed(_chair, shift + sx * (tw / 2 + 0.15), z, 0.48, 0.5, yaw=sx * math.pi / 2)
        )
    return items


def _office(rng: random.Random, p: Palette, room: Room) -> list[Placed]:
    side = rng.choice((-1, 1))
    dx = -side * rng.uniform(0.1, 0.4)
    desk_w = rng.choice((1.4, 1.6))
    desk_z = room.back - 2.0 - rng.uniform(0.0, 0.3)
    return [
        Placed(_rug, dx, desk_z + 0.2, 2.6, 2.2, kind="rug", optional=True),
        Placed(_bookshelf, side * 1.4, room.back - 0.2, 1.0, 0.35),
        Placed(
            _office_chair,
            dx + side * rng.uniform(0.2, 0.35),
            desk_z + 0.75,
            0.6,
            0.6,
            yaw=side * rng.uniform(0.3, 0.6),
        ),
        Placed(_desk, dx, desk_z, desk_w, 0.72),
        Placed(_plant, -side * 1.5, desk_z + 0.6, 0.5, 0.5, optional=True),
        Placed(_floor_lamp, side * 1.75, desk_z - 0.2, 0.4, 0.4, optional=True),
    ]


def _entryway(rng: random.Random, p: Palette, room: Room) -> list[Placed]:
    shift = rng.uniform(-0.3, 0.3)
    side = rng.choice((-1, 1))
    return [
        Placed(_rug, shift, room.back - 2.2, 1.0, 3.6, kind="rug"),
        Placed(_mirror, shift, room.back, 0.72, 0.72, kind="wall"),
        Placed(_console, shift, room.back - 0.2, 1.4, 0.38),
        Placed(_plant, shift - side * 1.2, room.back - 0.5, 0.45, 0.45, optional=True),
        Placed(_bench, side * 1.3, room.back - 2.6, 1.2, 0.42),
        Placed(_plant, -side * 1.1, room.back - 1.3, 0.4, 0.4, optional=True),
    ]


def _outdoor(rng: random.Random, p: Palette, room: Room) -> list[Placed]:
    side = rng.choice((-1, 1))
    tx = -side * rng.uniform(0.4, 0.7)
    tz = room.back - 2.4
    return [
        Placed(_rug, tx, tz, 2.4, 2.2, kind="rug", optional=True),
        Placed(_planter, -side * 0.2, room.back - 0.35, 0.6, 0.6, optional=True),
        Placed(_planter, side * 0.9, room.back - 0.35, 0.6, 0.6, optional=True),
        Placed(_patio_table, tx, tz, 1.0, 1.0),
        Placed(_chair, tx, tz + 0.7, 0.48, 0.5),
        Placed(_chair, tx - 0.72, tz, 0.48, 0.5, yaw=-math.pi / 2),
        Placed(_chair, tx + 0.72, tz, 0.48, 0.5, yaw=math.pi / 2),
        Placed(_lounge_chair, side * 1.35, room.back - 2.5, 0.75, 1.95),
    ]


LAYOUTS: dict[RoomType, Layout] = {
    RoomType.LIVING_ROOM: _living_room,
    RoomType.BEDROOM: _bedroom,
    RoomType.KITCHEN: _kitchen,
    RoomType.BATHROOM: _bathroom,
    RoomType.DINING_ROOM: _dining_room,
    RoomType.OFFICE: _office,
    RoomType.ENTRYWAY: _entryway,
    RoomType.OUTDOOR: _outdoor,
}


def _fit(items: list[Placed], cam: Camera, room: Room) -> list[Placed]:
    """Keep pieces in front of the nearest visible floor and clear of the side margins."""
    fitted = []
    for item in items:
        reach = max(item.w, item.d) if item.yaw else item.w
        depth = max(item.w, item.d) if item.yaw else item.d
        x, z = item.x, item.z
        if item.kind == "wall":
            x = room.fits(cam, x, room.back, item.w)
        else:
            front = z - depth / 2
            if front < room.near:
                if item.optional and item.kind != "rug":
                    continue
                z += room.near - front
            if item.kind != "rug":
                x = room.fits(cam, x, z - depth / 2, reach)
        fitted.append(replace(item, x=x, z=z))
    return fitted


def _paint_order(item: Placed) -> tuple[int, float, float]:
    rank = {"rug": 0, "wall": 1, "floor": 2, "ceiling": 2}[item.kind]
    return (rank, -item.z, -abs(item.x))


def _downsample(layer: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Shrink a supersampled layer with LANCZOS, resampling only the region that was drawn on."""
    out = Image.new("RGBA", size, (0, 0, 0, 0))
    bbox = layer.getbbox()
    if bbox is None:
        return out
    pad = 4 * SUPERSAMPLE
    x0, y0 = max(0, bbox[0] - pad) // SUPERSAMPLE, max(0, bbox[1] - pad) // SUPERSAMPLE
    x1 = min(size[0], -(-(bbox[2] + pad) // SUPERSAMPLE))
    y1 = min(size[1], -(-(bbox[3] + pad) // SUPERSAMPLE))
    box = (x0 * SUPERSAMPLE, y0 * SUPERSAMPLE, x1 * SUPERSAMPLE, y1 * SUPERSAMPLE)
    out.paste(layer.resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS, box=box), (x0, y0))
    return out


def _render(
    photo: Image.Image, cam: Camera, items: list[Placed], palette: Palette
) -> tuple[Image.Image, float]:
    r = Renderer(cam)
    for item in sorted(items, key=_paint_order):
        fr = Frame(item.x, item.z, item.yaw)
        r.use_layer(rugs=item.kind == "rug")
        if item.kind == "floor":
            r.shadow(fr, item.w, item.d, 0.6 if item.draw is _plant else 1.0)
        item.draw(r, fr, item.w, item.d, palette, random.Random(item.seed))
    rugs = _downsample(r.rugs, photo.size)
    furniture = _downsample(r.furniture, photo.size)
    drawn = ImageChops.lighter(rugs.getchannel("A"), furniture.getchannel("A")).histogram()
    coverage = sum(drawn[128:]) / (photo.width * photo.height)
    blur = max(0.5, cam.height / _SHADOW_SCALE * 0.012)
    soft = r.soft.filter(ImageFilter.GaussianBlur(blur * 2.5))
    contact = r.contact.filter(ImageFilter.GaussianBlur(blur * 0.8))
    shade = ImageChops.add(soft, contact, scale=1.6).resize(photo.size, Image.Resampling.BILINEAR)
    out = photo.convert("RGBA")
    out.alpha_composite(rugs)
    out = Image.composite(Image.new("RGBA", photo.size, (18, 14, 10, 255)), out, shade)
    out.alpha_composite(furniture)
    return out.convert("RGB"), coverage


def furnish(photo: Image.Image, room_type: RoomType, style: Style, seed: int) -> Image.Image:
    """Return a copy of an empty-room photo with furniture for the room type and style drawn in."""
    photo = photo.convert("RGB")
    cam = camera_for(photo)
    rng = random.Random(f"{RoomType(room_type).value}|{Style(style).value}|{seed}")
    palette = PALETTES[Style(style)]
    room = Room(back=BACK_WALL_M, near=cam.depth_of_row(0.97 * cam.height))
    items = [replace(i, seed=_seeds(rng)) for i in LAYOUTS[RoomType(room_type)](rng, palette, room)]
    if palette.sparse:
        items = [i for i in items if not i.optional or i.kind == "rug"]
    items = _fit(items, cam, room)
    out, coverage = _render(photo, cam, items, palette)
    # Tall or narrow frames can make the layout crowd the photo: shed decor, then shrink rugs.
    for _ in range(MAX_RETRIES):
        if coverage <= MAX_COVERAGE:
            break
        optional = [i for i in items if i.optional]
        if optional:
            drop = max(optional, key=lambda i: i.w * i.d / i.z**2)
            items = [i for i in items if i is not drop]
        else:
            items = [
                replace(i, w=i.w * 0.75, d=i.d * 0.75) if i.kind == "rug" else i for i in items
            ]
        out, coverage = _render(photo, cam, items, palette)
    return out
