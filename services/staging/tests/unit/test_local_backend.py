"""Unit tests for the offline, deterministic local staging backend."""

import pytest
from PIL import Image, ImageChops, ImageStat

from contracts.enums import RoomType, Style
from staging.backends.local import DEFAULT_FLOOR_LINE, estimate_floor_line, furnish
from staging.backends.sample_room import sample_room

# A channel difference above this counts as a drawn pixel; soft shadow fringes stay below it.
DRAWN = 24
# Pendants hang from the ceiling, so only the kitchen may draw in the top band of the frame.
CEILING_ITEMS = {RoomType.KITCHEN}
TOP_BAND = 0.30


@pytest.fixture(scope="module")
def room() -> Image.Image:
    return sample_room(480, 320, seed=0)


def drawn_mask(before: Image.Image, after: Image.Image) -> Image.Image:
    r, g, b = ImageChops.difference(before, after).split()
    strongest = ImageChops.lighter(ImageChops.lighter(r, g), b)
    return strongest.point(lambda v: 255 if v > DRAWN else 0)


def coverage(mask: Image.Image) -> float:
    return mask.histogram()[255] / (mask.width * mask.height)


class TestDeterminism:
    def test_same_seed_gives_identical_bytes(self, room: Image.Image) -> None:
        first = furnish(room, RoomType.LIVING_ROOM, Style.MODERN, seed=7)
        second = furnish(room, RoomType.LIVING_ROOM, Style.MODERN, seed=7)
        assert first.tobytes() == second.tobytes()

    @pytest.mark.parametrize("room_type", list(RoomType))
    def test_different_seed_gives_different_output(
        self, room: Image.Image, room_type: RoomType
    ) -> None:
        outputs = {furnish(room, room_type, Style.RUSTIC, seed=s).tobytes() for s in range(3)}
        assert len(outputs) > 1


class TestOutputImage:
    def test_output_has_input_size_and_rgb_mode(self, room: Image.Image) -> None:
        out = furnish(room, RoomType.BEDROOM, Style.COASTAL, seed=1)
        assert out.size == room.size
        assert out.mode == "RGB"

    def test_input_image_is_not_modified(self, room: Image.Image) -> None:
        photo = room.copy()
        before = photo.tobytes()
        out = furnish(photo, RoomType.OFFICE, Style.INDUSTRIAL, seed=2)
        assert out is not photo
        assert photo.tobytes() == before

    def test_non_rgb_input_is_accepted(self, room: Image.Image) -> None:
        out = furnish(room.convert("RGBA"), RoomType.ENTRYWAY, Style.BOHEMIAN, seed=0)
        assert out.mode == "RGB"
        assert out.size == room.size

    @pytest.mark.parametrize("room_type", list(RoomType))
    def test_output_visibly_differs_from_input(
        self, room: Image.Image, room_type: RoomType
    ) -> None:
        out = furnish(room, room_type, Style.SCANDINAVIAN, seed=0)
        mean_abs_diff = sum(ImageStat.Stat(ImageChops.difference(room, out)).mean) / 3
        assert mean_abs_diff > 3.0


class TestCoverage:
    @pytest.mark.parametrize("room_type", list(RoomType))
    def test_drawn_share_stays_between_3_and_45_percent_for_every_style(
        self, room: Image.Image, room_type: RoomType
    ) -> None:
        for style in Style:
            share = coverage(drawn_mask(room, furnish(room, room_type, style, seed=0)))
            assert 0.03 < share < 0.45, (style, share)


class TestPlacement:
    @pytest.mark.parametrize("room_type", list(RoomType))
    def test_lowest_drawn_pixels_are_on_the_floor(
        self, room: Image.Image, room_type: RoomType
    ) -> None:
        for style in Style:
            box = drawn_mask(room, furnish(room, room_type, style, seed=3)).getbbox()
            assert box is not None, style
            assert box[3] > room.height / 2, (style, box)

    @pytest.mark.parametrize("room_type", [t for t in RoomType if t not in CEILING_ITEMS])
    def test_nothing_is_drawn_in_the_top_band(self, room: Image.Image, room_type: RoomType) -> None:
        band = (0, 0, room.width, int(room.height * TOP_BAND))
        for style in Style:
            mask = drawn_mask(room, furnish(room, room_type, style, seed=0))
            assert mask.crop(band).getbbox() is None, style

    def test_kitchen_draws_only_small_pendants_in_the_top_band(self, room: Image.Image) -> None:
        band = (0, 0, room.width, int(room.height * TOP_BAND))
        for style in Style:
            mask = drawn_mask(room, furnish(room, RoomType.KITCHEN, style, seed=0))
            assert coverage(mask.crop(band)) < 0.05, style


class TestFloorLine:
    def test_finds_the_back_wall_base_of_the_sample_room(self) -> None:
        assert estimate_floor_line(sample_room(600, 400, seed=4)) == pytest.approx(0.56, abs=0.03)

    def test_falls_back_to_the_default_on_a_featureless_photo(self) -> None:
        flat = Image.new("RGB", (400, 300), (128, 128, 128))
        assert estimate_floor_line(flat) == DEFAULT_FLOOR_LINE


class TestOddSizes:
    @pytest.mark.parametrize("size", [(97, 211), (3000, 200), (16, 9), (211, 97)])
    @pytest.mark.parametrize("room_type", list(RoomType))
    def test_furnishes_without_error_and_keeps_the_size(
        self, size: tuple[int, int], room_type: RoomType
    ) -> None:
        photo = sample_room(*size, seed=1)
        out = furnish(photo, room_type, Style.TRADITIONAL, seed=5)
        assert out.size == size
        assert out.mode == "RGB"
