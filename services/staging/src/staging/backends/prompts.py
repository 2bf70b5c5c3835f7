"""The prompt library: what to place in each room type, in each style, and what never to touch.

Remote models get one prompt per room type x style, assembled from the entries below: the
furniture a room of that type needs, written for each style (`FURNISHINGS`), the style's
palette and materials (`STYLES`), where furniture may go in that room (`ROOMS`), and the rules
every staged photo obeys (`KEEP`, `NEGATIVE`). Edit the words here, not the assembly code.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts.enums import RoomType, Style


@dataclass(frozen=True)
class RoomBrief:
    """What a room type is for and how its furniture is arranged."""

    label: str
    purpose: str
    placement: str


@dataclass(frozen=True)
class StyleBrief:
    """How a style looks: palette, materials and finishing touches."""

    label: str
    palette: str
    materials: str
    accents: str


ROOMS: dict[RoomType, RoomBrief] = {
    RoomType.LIVING_ROOM: RoomBrief(
        "living room",
        "a welcoming living room for relaxing and receiving guests",
        "Group the seating around a rug facing the room's focal point, with the sofa against "
        "a solid wall and a clear path from every doorway to the windows.",
    ),
    RoomType.BEDROOM: RoomBrief(
        "bedroom",
        "a calm, restful bedroom",
        "Put the headboard against the wall without windows or doors, with space to walk "
        "around both sides of the bed and in front of any wardrobe or closet door.",
    ),
    RoomType.KITCHEN: RoomBrief(
        "kitchen",
        "a bright kitchen ready for cooking and casual meals",
        "Keep the existing cabinets, worktops, sink and appliances exactly as they are; add "
        "only movable pieces and countertop styling, leaving the work aisles open.",
    ),
    RoomType.BATHROOM: RoomBrief(
        "bathroom",
        "a clean, spa-like bathroom",
        "Keep the existing bath, shower, toilet, basin, taps and tiles exactly as they are; "
        "add only towels, small furniture and accessories that leave the floor clear.",
    ),
    RoomType.DINING_ROOM: RoomBrief(
        "dining room",
        "an inviting dining room for family meals and entertaining",
        "Centre the table under the ceiling light with room to pull every chair out, and "
        "keep the way between the kitchen and the other doorways free.",
    ),
    RoomType.OFFICE: RoomBrief(
        "home office",
        "a focused, organised home office",
        "Place the desk to catch the window light from the side, the chair with room to "
        "move, and the shelving against a solid wall.",
    ),
    RoomType.ENTRYWAY: RoomBrief(
        "entryway",
        "a tidy, welcoming entryway",
        "Keep furniture slim and against the walls so the front door opens fully and the "
        "passage into the house stays wide.",
    ),
    RoomType.OUTDOOR: RoomBrief(
        "outdoor terrace",
        "an inviting outdoor living space on the existing patio, deck or terrace",
        "Place weather-proof furniture only on the paved or decked area, keep steps, gates "
        "and doors clear, and leave the lawn, planting, fences and facade untouched.",
    ),
}

STYLES: dict[Style, StyleBrief] = {
    Style.MODERN: StyleBrief(
        "modern",
        "crisp white, charcoal and warm grey with one deep blue accent",
        "matte lacquer, smooth leather, brushed black metal and clear glass",
        "clean-lined abstract art and a few sculptural objects",
    ),
    Style.CONTEMPORARY: StyleBrief(
        "contemporary",
        "soft greige, cream and sage with brushed brass highlights",
        "boucle and performance fabrics, light oak, honed stone and brass",
        "rounded silhouettes, large-scale art and layered textured cushions",
    ),
    Style.TRADITIONAL: StyleBrief(
        "traditional",
        "warm ivory, navy, burgundy and deep wood tones",
        "polished cherry and mahogany, damask and velvet upholstery, antique brass",
        "framed landscapes, table lamps with pleated shades and a patterned wool rug",
    ),
    Style.INDUSTRIAL: StyleBrief(
        "industrial",
        "charcoal, rust, cognac and raw grey",
        "blackened steel, reclaimed wood, distressed leather and concrete",
        "exposed-bulb lamps, metal-framed shelving and vintage prints",
    ),
    Style.SCANDINAVIAN: StyleBrief(
        "Scandinavian",
        "white, pale grey, soft sand and muted green",
        "light ash and birch, wool, linen and sheepskin",
        "simple ceramics, a few green plants and airy uncluttered surfaces",
    ),
    Style.RUSTIC: StyleBrief(
        "rustic",
        "warm browns, cream, forest green and terracotta",
        "rough-sawn timber, wrought iron, stoneware, jute and chunky knits",
        "woven baskets, earthenware pots and plaid throws",
    ),
    Style.COASTAL: StyleBrief(
        "coastal",
        "white, sand, driftwood grey and soft ocean blue",
        "whitewashed wood, rattan, rope, linen and seagrass",
        "striped cushions, glass vases and light, breezy textiles",
    ),
    Style.BOHEMIAN: StyleBrief(
        "bohemian",
        "terracotta, mustard, emerald and deep plum on warm neutrals",
        "rattan, carved wood, macrame, kilim and velvet",
        "layered patterned rugs, floor cushions and many trailing plants",
    ),
    Style.MINIMALIST: StyleBrief(
        "minimalist",
        "white, stone and soft black with no more than two accents",
        "pale wood, matte metal and plain natural fabrics",
        "very few objects, generous empty space and hidden storage",
    ),
    Style.MID_CENTURY_MODERN: StyleBrief(
        "mid-century modern",
        "walnut brown, mustard, teal and burnt orange on white",
        "teak and walnut veneers, tapered wooden legs, tweed and moulded plywood",
        "a sunburst mirror, globe lamps and graphic prints",
    ),
}

FURNISHINGS: dict[RoomType, dict[Style, str]] = {
    RoomType.LIVING_ROOM: {
        Style.MODERN: "a low charcoal sectional sofa, a glass-topped coffee table, a slim "
        "media console, an arched floor lamp and a flat-woven grey rug",
        Style.CONTEMPORARY: "a curved cream boucle sofa, two sculptural lounge chairs, a "
        "round travertine coffee table, a brass floor lamp and a textured wool rug",
        Style.TRADITIONAL: "a rolled-arm sofa in damask, a pair of wingback armchairs, a "
        "carved wood coffee table, side tables with pleated lamps and a Persian rug",
        Style.INDUSTRIAL: "a cognac leather Chesterfield sofa, a reclaimed-wood coffee table "
        "on steel legs, a metal-framed bookcase, a tripod floor lamp and a faded rug",
        Style.SCANDINAVIAN: "a light grey fabric sofa on oak legs, a birch coffee table, a "
        "sheepskin-draped lounge chair, a paper floor lamp and a pale wool rug",
        Style.RUSTIC: "a deep slipcovered sofa, a chunky timber coffee table, a leather "
        "club chair, a wrought-iron floor lamp and a braided jute rug",
        Style.COASTAL: "a white linen slipcovered sofa, rattan armchairs, a whitewashed "
        "coffee table, a rope-base lamp and a blue-striped seagrass rug",
        Style.BOHEMIAN: "a low velvet sofa heaped with patterned cushions, a carved wood "
        "coffee table, floor poufs, a rattan peacock chair and layered kilim rugs",
        Style.MINIMALIST: "one low stone-coloured sofa, a single pale-wood coffee table, one "
        "slim floor lamp and a plain flat rug",
        Style.MID_CENTURY_MODERN: "a walnut-framed sofa in mustard tweed, an Eames-style "
        "lounge chair, an oval teak coffee table, a globe floor lamp and a geometric rug",
    },
    RoomType.BEDROOM: {
        Style.MODERN: "a low platform bed with crisp white and charcoal bedding, lacquered "
        "nightstands with sleek lamps, a slim dresser and a grey rug",
        Style.CONTEMPORARY: "an upholstered bed with a tall channelled headboard, layered "
        "cream and sage bedding, round nightstands with brass lamps and a soft rug",
        Style.TRADITIONAL: "a carved wooden sleigh bed with quilted bedding, matching "
        "nightstands with pleated lamps, a chest of drawers and a patterned rug",
        Style.INDUSTRIAL: "a black metal-frame bed with rumpled grey linen, reclaimed-wood "
        "nightstands, caged pendant-style table lamps and a worn leather bench",
        Style.SCANDINAVIAN: "a light oak bed with white linen and a knitted throw, simple "
        "birch nightstands, a paper table lamp and a pale wool rug",
        Style.RUSTIC: "a timber-frame bed with a plaid throw, log-style nightstands, iron "
        "table lamps, a blanket chest at the foot and a braided rug",
        Style.COASTAL: "a whitewashed bed with white and soft-blue bedding, rattan "
        "nightstands, glass-base lamps and a natural seagrass rug",
        Style.BOHEMIAN: "a low bed layered with patterned quilts and cushions, a carved "
        "wood nightstand, a macrame wall hanging above and a kilim rug",
        Style.MINIMALIST: "a low pale-wood platform bed with plain white bedding, one small "
        "nightstand with a simple lamp and nothing else on the floor",
        Style.MID_CENTURY_MODERN: "a walnut bed with tapered legs, teal and mustard bedding, "
        "matching walnut nightstands with globe lamps and a low teak dresser",
    },
    RoomType.KITCHEN: {
        Style.MODERN: "three sleek bar stools in black and chrome at the counter, a glass "
        "bowl of green apples and a single modern vase",
        Style.CONTEMPORARY: "upholstered counter stools with brass footrests, a marble "
        "board with fruit, a ceramic vase of branches and a neat coffee corner",
        Style.TRADITIONAL: "wooden ladder-back stools, a copper pot on the hob, a bowl of "
        "lemons and a striped runner rug",
        Style.INDUSTRIAL: "metal stools with wooden seats, a butcher-block board, enamel "
        "canisters and a small herb planter",
        Style.SCANDINAVIAN: "light oak stools, a linen tea towel, white ceramic jars and a "
        "potted herb on the counter",
        Style.RUSTIC: "woven-seat wooden stools, a farmhouse bread board, stoneware crocks "
        "with utensils and a basket of vegetables",
        Style.COASTAL: "rattan counter stools, a white bowl of citrus, glass jars and a "
        "soft blue striped runner",
        Style.BOHEMIAN: "carved wood stools, colourful ceramic bowls, hanging plants near "
        "the window and a patterned runner",
        Style.MINIMALIST: "two simple pale-wood stools and one bowl of fruit on an otherwise "
        "empty counter",
        Style.MID_CENTURY_MODERN: "moulded-seat stools on walnut legs, an orange enamel pot, "
        "a teak fruit bowl and a graphic runner",
    },
    RoomType.BATHROOM: {
        Style.MODERN: "neatly folded charcoal towels, a black soap dispenser set, a small "
        "sculptural vase and a slim bath mat",
        Style.CONTEMPORARY: "plush cream towels, a brass tray with amber bottles, a small "
        "stool and a eucalyptus sprig in a vase",
        Style.TRADITIONAL: "monogrammed white towels, a wooden towel stand, a porcelain soap "
        "dish and a patterned bath mat",
        Style.INDUSTRIAL: "grey waffle towels on a metal ladder rack, concrete accessories "
        "and a small wire basket",
        Style.SCANDINAVIAN: "white and sand towels, an oak stool, a simple ceramic cup and a "
        "potted green plant",
        Style.RUSTIC: "oatmeal linen towels, a wooden bath caddy, a stoneware jug and a "
        "woven basket",
        Style.COASTAL: "white and pale blue striped towels, a rattan basket, glass jars of "
        "sea salt and a shell dish",
        Style.BOHEMIAN: "colourful patterned towels, macrame hanging planter, a carved "
        "wooden tray and a small woven rug",
        Style.MINIMALIST: "two folded white towels and a single soap bottle",
        Style.MID_CENTURY_MODERN: "mustard and teal towels, a teak bath mat, a walnut tray "
        "and a small ceramic vase",
    },
    RoomType.DINING_ROOM: {
        Style.MODERN: "a rectangular matte-black table with six moulded chairs, a low "
        "sideboard and a simple centrepiece",
        Style.CONTEMPORARY: "an oval light-oak table with upholstered curved chairs, a "
        "fluted sideboard with brass details and a vase of greenery",
        Style.TRADITIONAL: "a polished mahogany pedestal table with upholstered high-back "
        "chairs, a china cabinet and candlesticks on a runner",
        Style.INDUSTRIAL: "a reclaimed-wood trestle table on steel legs, mixed metal chairs, "
        "a steel-framed sideboard and a row of glass bottles",
        Style.SCANDINAVIAN: "a round birch table with spindle-back chairs, a simple white "
        "sideboard and a linen runner with a single vase",
        Style.RUSTIC: "a long farmhouse table with a bench and cross-back chairs, an iron "
        "candelabra and a dresser with stoneware",
        Style.COASTAL: "a whitewashed table with rattan chairs, a driftwood centrepiece and "
        "glass hurricane lanterns",
        Style.BOHEMIAN: "a carved wood table with mismatched colourful chairs, a kilim rug "
        "underneath and plants and candles on the table",
        Style.MINIMALIST: "a plain pale-wood table with four simple chairs and nothing on it "
        "but one small vase",
        Style.MID_CENTURY_MODERN: "a walnut table with tapered legs, moulded shell chairs, a "
        "teak credenza and a sputnik-style centrepiece",
    },
    RoomType.OFFICE: {
        Style.MODERN: "a white lacquer desk, a black ergonomic chair, a slim task lamp and "
        "open black-metal shelving",
        Style.CONTEMPORARY: "a light-oak desk with brass pulls, a cream upholstered desk "
        "chair, a sculptural lamp and a low credenza",
        Style.TRADITIONAL: "a carved wooden writing desk with a leather top, a tufted "
        "leather chair, a banker's lamp and glass-fronted bookcases",
        Style.INDUSTRIAL: "a reclaimed-wood desk on steel legs, a vintage swivel chair, an "
        "articulated metal lamp and pipe-frame shelving",
        Style.SCANDINAVIAN: "a birch desk, a light wooden chair with a wool cushion, a "
        "white lamp and a simple wall shelf with plants",
        Style.RUSTIC: "a heavy timber desk, a leather and iron chair, an iron lamp and "
        "wooden crates as shelving",
        Style.COASTAL: "a whitewashed desk, a rattan chair, a glass lamp and baskets on open "
        "white shelving",
        Style.BOHEMIAN: "a carved wood desk, a colourful upholstered chair, a fringed lamp, "
        "stacked books and trailing plants",
        Style.MINIMALIST: "a plain white desk, one simple chair and a single lamp, with "
        "storage out of sight",
        Style.MID_CENTURY_MODERN: "a walnut desk with tapered legs, a moulded shell office "
        "chair, a globe lamp and a teak bookcase",
    },
    RoomType.ENTRYWAY: {
        Style.MODERN: "a slim floating console, a round black-framed mirror and a low bench",
        Style.CONTEMPORARY: "a curved console with a brass lamp, an arched mirror and a "
        "small upholstered bench",
        Style.TRADITIONAL: "a carved console table with a table lamp, a gilt mirror and an "
        "umbrella stand",
        Style.INDUSTRIAL: "a steel and wood console, a metal-framed mirror and a wall-hung "
        "coat rail with hooks",
        Style.SCANDINAVIAN: "a slim oak bench, simple peg hooks, a round mirror and a "
        "woven basket for shoes",
        Style.RUSTIC: "a timber bench, an iron coat rack, a wood-framed mirror and a jute runner",
        Style.COASTAL: "a whitewashed console, a rope-framed mirror, a seagrass basket and "
        "a striped runner",
        Style.BOHEMIAN: "a carved console with plants, a round rattan mirror and a "
        "colourful runner",
        Style.MINIMALIST: "one slim bench and one plain round mirror",
        Style.MID_CENTURY_MODERN: "a walnut console on tapered legs, a sunburst mirror and a "
        "globe table lamp",
    },
    RoomType.OUTDOOR: {
        Style.MODERN: "a low grey outdoor sofa with a concrete coffee table and tall black "
        "planters",
        Style.CONTEMPORARY: "curved woven lounge chairs, a round stone side table and large "
        "terracotta-toned planters",
        Style.TRADITIONAL: "a teak bench and armchairs with striped cushions, a round table "
        "and urn planters with boxwood",
        Style.INDUSTRIAL: "metal-framed chairs, a reclaimed-wood table and string lights on "
        "the existing structure only",
        Style.SCANDINAVIAN: "light wooden deck chairs with pale cushions, a small folding "
        "table and potted grasses",
        Style.RUSTIC: "a timber picnic-style table with benches, lanterns and potted herbs",
        Style.COASTAL: "white Adirondack chairs, a weathered wood side table and blue "
        "striped cushions",
        Style.BOHEMIAN: "a low daybed with patterned cushions, a woven pouf, lanterns and "
        "many potted plants",
        Style.MINIMALIST: "two simple lounge chairs and one low table",
        Style.MID_CENTURY_MODERN: "wire-frame lounge chairs with mustard cushions, a teak "
        "side table and cylindrical planters",
    },
}

KEEP = (
    "Keep exactly as they are: the walls and where they stand, the wall paint colours, the "
    "ceiling, the floor, every window and the view through it, every door and doorway, and "
    "every light fixture and switch. Do not block any doorway, hallway or window; leave clear "
    "walking paths."
)

REALISM = (
    "Every piece stands on the floor at a true-to-life scale for this room, in the photo's "
    "perspective, lit by the room's own windows and fixtures with realistic soft shadows "
    "where it touches the floor. A photorealistic real-estate photograph with the same camera "
    "angle, framing and white balance."
)

NEGATIVE: tuple[str, ...] = (
    "changed wall colour",
    "moved or removed walls",
    "new, moved or resized windows",
    "altered, covered or blocked doors",
    "furniture blocking a doorway",
    "new or changed light fixtures",
    "changed flooring",
    "floating or sinking furniture",
    "furniture cut through by walls",
    "distorted perspective",
    "people or pets",
    "text, logos or watermarks",
    "clutter",
    "cartoon or CGI look",
    "oversaturated colours",
)


@dataclass(frozen=True)
class Prompt:
    """A prompt and the things to avoid, for models with or without a negative prompt."""

    positive: str
    negative: str

    def inline(self) -> str:
        """The prompt with the negatives spelled out, for models without a negative field."""
        return f"{self.positive} Avoid: {self.negative}."


def build_prompt(room_type: RoomType, style: Style) -> Prompt:
    """The staging prompt for one room type in one style."""
    room = ROOMS[room_type]
    look = STYLES[style]
    positive = " ".join(
        (
            f"Virtually stage this photo of an empty {room.label} as {room.purpose}, "
            f"furnished in a {look.label} style.",
            f"Add {FURNISHINGS[room_type][style]}.",
            f"Palette: {look.palette}. Materials: {look.materials}. Finishing touches: "
            f"{look.accents}.",
            room.placement,
            KEEP,
            REALISM,
        )
    )
    return Prompt(positive=positive, negative=", ".join(NEGATIVE))
