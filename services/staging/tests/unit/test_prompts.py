"""The prompt library covers every room type in every style, and protects the room."""

from __future__ import annotations

import pytest

from contracts.enums import RoomType, Style
from staging.backends.prompts import FURNISHINGS, ROOMS, STYLES, build_prompt

ROOM_WORDS: dict[RoomType, tuple[str, ...]] = {
    RoomType.LIVING_ROOM: ("sofa",),
    RoomType.BEDROOM: ("bed",),
    RoomType.KITCHEN: ("stool",),
    RoomType.BATHROOM: ("towel",),
    RoomType.DINING_ROOM: ("table", "chair"),
    RoomType.OFFICE: ("desk", "chair"),
    RoomType.ENTRYWAY: ("mirror", "bench", "console"),
    RoomType.OUTDOOR: ("chair", "table", "sofa", "daybed", "bench"),
}

ALL = [(room, style) for room in RoomType for style in Style]


class TestPromptLibrary:
    """One prompt per room type x style, written for that pair."""

    def test_every_room_type_and_style_has_an_entry(self) -> None:
        assert set(ROOMS) == set(RoomType)
        assert set(STYLES) == set(Style)
        for room in RoomType:
            assert set(FURNISHINGS[room]) == set(Style), room

    @pytest.mark.parametrize(("room", "style"), ALL)
    def test_the_prompt_names_the_rooms_furniture_in_the_style(
        self, room: RoomType, style: Style
    ) -> None:
        prompt = build_prompt(room, style).positive.lower()
        assert ROOMS[room].label in prompt
        assert STYLES[style].label.lower() in prompt
        assert any(word in prompt for word in ROOM_WORDS[room]), prompt
        assert STYLES[style].palette.lower() in prompt

    @pytest.mark.parametrize(("room", "style"), ALL)
    def test_the_prompt_keeps_the_rooms_structure(self, room: RoomType, style: Style) -> None:
        prompt = build_prompt(room, style)
        text = prompt.positive.lower()
        for kept in ("walls", "paint", "windows", "door", "floor", "light fixture"):
            assert kept in text, kept
        assert "do not block any doorway" in text
        assert "shadows" in text
        assert "furniture blocking a doorway" in prompt.negative

    def test_prompts_differ_between_styles_and_rooms(self) -> None:
        prompts = {build_prompt(room, style).positive for room, style in ALL}
        assert len(prompts) == len(ALL)

    def test_the_inline_form_spells_out_what_to_avoid(self) -> None:
        prompt = build_prompt(RoomType.BEDROOM, Style.COASTAL)
        assert prompt.inline().startswith(prompt.positive)
        assert "Avoid: changed wall colour" in prompt.inline()
