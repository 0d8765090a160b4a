"""The scene generator behind huabu-tiny: emoji glyphs composed on named colour backgrounds, with exact captions.

Every scene is a pure function of (seed, index), so a dataset is reproducible without storing it, and because we
know exactly what each scene holds, prompt adherence (colour, position, identity, motion) can be measured exactly.
"""

from __future__ import annotations

import hashlib
import itertools
import unicodedata
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from huabu.core.errors import HuabuError

IMAGE_SIZE = 64
EMOJI_FONT_PATHS = (
    Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"),
    Path("/usr/local/share/fonts/NotoColorEmoji.ttf"),
)
# NotoColorEmoji is a CBDT bitmap font: FreeType only loads it at its one strike size.
_EMOJI_STRIKE = 109

# The objects: visually distinct glyphs at 26-36 px. Captions use the lower-cased Unicode name, except where that
# name is a Unicode 1.1 relic that misleads (e.g. "HEAVY BLACK HEART" is drawn red): there the CLDR short name.
OBJECTS: tuple[tuple[str, str], ...] = tuple(
    (ch, name or unicodedata.name(ch).lower())
    for ch, name in [
        ("\U0001F34E", ""), ("\U0001F34C", ""), ("\U0001F347", ""), ("\U0001F349", ""), ("\U0001F34B", ""),
        ("\U0001F353", ""), ("\U0001F34D", ""), ("\U0001F955", ""), ("\U0001F344", ""), ("\U0001F951", ""),
        ("\U0001F354", ""), ("\U0001F355", ""), ("\U0001F369", ""), ("\U0001F382", ""), ("\U0001F366", ""),
        ("\U0001F680", ""), ("\U0001F697", ""), ("\U0001F68C", ""), ("\u2708", "airplane"), ("\u26F5", ""),
        ("\U0001F333", ""), ("\U0001F334", ""), ("\U0001F335", ""), ("\U0001F33B", ""), ("\U0001F339", ""),
        ("\U0001F431", ""), ("\U0001F436", ""), ("\U0001F41F", ""), ("\U0001F438", ""), ("\U0001F437", ""),
        ("\U0001F43C", ""), ("\U0001F427", ""), ("\U0001F989", ""), ("\U0001F422", ""), ("\U0001F98B", ""),
        ("\U0001F980", ""), ("\U0001F419", ""), ("\U0001F433", "whale"), ("\U0001F418", ""), ("\U0001F984", ""),
        ("\U0001F41E", ""), ("\U0001F430", ""), ("\U0001F47B", ""), ("\U0001F916", ""), ("\U0001F383", ""),
        ("\u26C4", "snowman"), ("\u2B50", "star"), ("\U0001F319", ""), ("\u2601", "cloud"), ("\u2602", "umbrella"),
        ("\U0001F525", ""), ("\U0001F4A7", ""), ("\U0001F308", ""), ("\u2764", "red heart"), ("\U0001F3B8", ""),
        ("\u26BD", ""), ("\U0001F388", ""), ("\U0001F381", ""), ("\U0001F451", ""), ("\U0001F48E", ""),
        ("\U0001F4A1", "light bulb"), ("\U0001F3A9", ""), ("\U0001F9F8", ""), ("\U0001F384", ""),
    ]
)
OBJECT_NAMES: tuple[str, ...] = tuple(name for _, name in OBJECTS)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 40, 40), "orange": (245, 135, 30), "yellow": (240, 215, 50), "green": (50, 160, 70),
    "blue": (40, 85, 215), "purple": (130, 55, 185), "pink": (245, 150, 200), "white": (245, 245, 245),
    "black": (20, 20, 20), "gray": (128, 128, 128),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

# Positions as fractions of the free travel (0 = touching the left/top edge, 1 = the right/bottom edge).
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.0, 0.5), "right": (1.0, 0.5), "top": (0.5, 0.0), "bottom": (0.5, 1.0), "center": (0.5, 0.5),
    "top left": (0.0, 0.0), "top right": (1.0, 0.0), "bottom left": (0.0, 1.0), "bottom right": (1.0, 1.0),
}
POSITION_NAMES: tuple[str, ...] = tuple(POSITIONS)
POSITION_PHRASES = {
    "left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
    "center": "in the center", "top left": "in the top left corner", "top right": "in the top right corner",
    "bottom left": "in the bottom left corner", "bottom right": "in the bottom right corner",
}
SIZES: dict[str, int] = {"small": 26, "large": 36}
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)
PAIR_SIZE = 26
MARGIN = 2  # pixels kept free between a glyph and the image edge
PAIR_LAYOUTS = (("left", "right"), ("top", "bottom"))

HELD_OUT_FRACTION = 0.1
TWO_OBJECT_FRACTION = 0.3


@dataclass(frozen=True)
class Placed:
    """One object in a scene: which glyph, where its box starts, and how big it is."""

    obj: int
    x: int
    y: int
    size: int
    position: str
    size_name: str | None


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[Placed, ...]
    caption: str
    attrs: dict = field(hash=False, compare=False, default_factory=dict)


def stable_fraction(*parts: object) -> float:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def is_held_out_triple(obj: int, colour: str, position: str) -> bool:
    """The fixed held-out object-colour-position triples: never rendered for training."""
    return stable_fraction("triple", OBJECT_NAMES[obj], colour, position) < HELD_OUT_FRACTION


def is_held_out_pair(a: int, b: int) -> bool:
    """The fixed held-out object pairs (unordered): never shown together in training."""
    lo, hi = sorted((OBJECT_NAMES[a], OBJECT_NAMES[b]))
    return stable_fraction("pair", lo, hi) < HELD_OUT_FRACTION


def held_out_triples() -> list[tuple[int, str, str]]:
    return [t for t in itertools.product(range(len(OBJECTS)), COLOUR_NAMES, POSITION_NAMES) if is_held_out_triple(*t)]


def held_out_pairs() -> list[tuple[int, int]]:
    return [(a, b) for a, b in itertools.combinations(range(len(OBJECTS)), 2) if is_held_out_pair(a, b)]


def find_emoji_font() -> Path:
    for path in EMOJI_FONT_PATHS:
        if path.is_file():
            return path
    raise HuabuError(
        "the emoji font is missing: install Debian's fonts-noto-color-emoji (scripts/install.sh --dev does)"
    )


@cache
def _glyph_master(char: str) -> Image.Image:
    font = ImageFont.truetype(str(find_emoji_font()), _EMOJI_STRIKE)
    canvas = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((0, 0), char, font=font, embedded_color=True)
    return canvas.crop(canvas.getbbox())


@cache
def char_glyph(char: str, size: int) -> np.ndarray:
    """An emoji as float32 RGBA in [0, 1], fitted into a size x size square (aspect kept, centred)."""
    master = _glyph_master(char)
    scale = size / max(master.size)
    w, h = max(1, round(master.width * scale)), max(1, round(master.height * scale))
    fitted = master.resize((w, h), Image.LANCZOS)
    square = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    square.paste(fitted, ((size - w) // 2, (size - h) // 2))
    return np.asarray(square, dtype=np.float32) / 255.0


def glyph(obj: int, size: int) -> np.ndarray:
    """Object `obj` of OBJECTS as char_glyph draws it."""
    return char_glyph(OBJECTS[obj][0], size)


def anchor_xy(position: str, size: int, image_size: int = IMAGE_SIZE) -> tuple[int, int]:
    """Top-left corner of a size x size box at a named position."""
    fx, fy = POSITIONS[position]
    travel = image_size - size - 2 * MARGIN
    return MARGIN + round(fx * travel), MARGIN + round(fy * travel)


def compose(background: str, glyphs: list[tuple[np.ndarray, int, int]], image_size: int = IMAGE_SIZE) -> np.ndarray:
    """RGBA glyphs alpha-blended in order at their (x, y) onto a named background, clipped at the edges: HxWx3 uint8."""
    canvas = np.empty((image_size, image_size, 3), np.float32)
    canvas[:] = np.asarray(COLOURS[background], np.float32) / 255.0
    for g, x, y in glyphs:
        size = g.shape[0]
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + size, image_size), min(y + size, image_size)
        if x0 >= x1 or y0 >= y1:
            continue
        patch = g[y0 - y : y1 - y, x0 - x : x1 - x]
        alpha = patch[..., 3:4]
        canvas[y0:y1, x0:x1] = patch[..., :3] * alpha + canvas[y0:y1, x0:x1] * (1 - alpha)
    return np.round(canvas * 255).astype(np.uint8)


def render(background: str, objects: tuple[Placed, ...] | list[Placed], image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Compose a scene into an HxWx3 uint8 array (objects drawn in order, clipped at the edges)."""
    return compose(background, [(glyph(p.obj, p.size), p.x, p.y) for p in objects], image_size)


def render_scaled(scene: Scene, factor: int) -> np.ndarray:
    """The scene drawn `factor` times larger: every position and size scaled, the glyphs drawn at that size (not a
    resize of the 64 px render)."""
    big = [Placed(p.obj, factor * p.x, factor * p.y, factor * p.size, p.position, p.size_name) for p in scene.objects]
    return render(scene.background, big, image_size=factor * IMAGE_SIZE)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def single_caption(obj: int, background: str, position: str | None, size_name: str | None) -> str:
    noun = f"{size_name} {OBJECT_NAMES[obj]}" if size_name else OBJECT_NAMES[obj]
    where = f" {POSITION_PHRASES[position]}" if position else ""
    return f"{article(noun)} {noun}{where} on {article(background)} {background} background"


def pair_caption(a: int, side_a: str, b: int, side_b: str, background: str) -> str:
    na, nb = OBJECT_NAMES[a], OBJECT_NAMES[b]
    return (f"{article(na)} {na} {POSITION_PHRASES[side_a]} and {article(nb)} {nb} {POSITION_PHRASES[side_b]}"
            f" on {article(background)} {background} background")


def jitter(rng: np.random.Generator, x: int, y: int, size: int, amount: int = 2) -> tuple[int, int]:
    limit = IMAGE_SIZE - size
    jx, jy = rng.integers(-amount, amount + 1, size=2)
    return int(np.clip(x + jx, 0, limit)), int(np.clip(y + jy, 0, limit))


def single_scene(rng: np.random.Generator, obj: int, background: str, position: str, size_name: str,
                 say_position: bool = True, say_size: bool = True) -> Scene:
    size = SIZES[size_name]
    x, y = jitter(rng, *anchor_xy(position, size), size)
    placed = Placed(obj, x, y, size, position, size_name)
    caption = single_caption(obj, background, position if say_position else None, size_name if say_size else None)
    attrs = {"objects": [obj], "background": background, "positions": [position], "sizes": [size_name],
             "said": {"position": say_position, "size": say_size}}
    return Scene(background, (placed,), caption, attrs)


def pair_scene(rng: np.random.Generator, a: int, b: int, background: str, layout: tuple[str, str]) -> Scene:
    placed = []
    for obj, side in ((a, layout[0]), (b, layout[1])):
        x, y = jitter(rng, *anchor_xy(side, PAIR_SIZE), PAIR_SIZE)
        placed.append(Placed(obj, x, y, PAIR_SIZE, side, None))
    caption = pair_caption(a, layout[0], b, layout[1], background)
    attrs = {"objects": [a, b], "background": background, "positions": list(layout), "sizes": [None, None],
             "said": {"position": True, "size": False}}
    return Scene(background, tuple(placed), caption, attrs)


def training_scene(seed: int, index: int) -> Scene:
    """Scene `index` of the training stream for `seed`: never a held-out triple or pair."""
    rng = np.random.default_rng([seed, index])
    n = len(OBJECTS)
    while True:
        background = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
        if rng.random() < TWO_OBJECT_FRACTION:
            a, b = (int(v) for v in rng.choice(n, size=2, replace=False))
            layout = PAIR_LAYOUTS[rng.integers(len(PAIR_LAYOUTS))]
            if is_held_out_pair(a, b) or any(is_held_out_triple(o, background, s) for o, s in zip((a, b), layout)):
                continue
            return pair_scene(rng, a, b, background, layout)
        obj = int(rng.integers(n))
        position = POSITION_NAMES[rng.integers(len(POSITION_NAMES))]
        if is_held_out_triple(obj, background, position):
            continue
        size_name = SIZE_NAMES[rng.integers(len(SIZE_NAMES))]
        return single_scene(rng, obj, background, position, size_name,
                            say_position=rng.random() < 0.85, say_size=rng.random() < 0.5)


def eval_single_scenes(count: int = 200, seed: int = 1234) -> list[Scene]:
    """Held-out single-object scenes (object-colour-position triples never trained on), position always stated."""
    rng = np.random.default_rng(seed)
    triples = held_out_triples()
    picks = rng.choice(len(triples), size=min(count, len(triples)), replace=False)
    scenes = []
    for k in picks:
        obj, colour, position = triples[int(k)]
        size_name = SIZE_NAMES[rng.integers(len(SIZE_NAMES))]
        scenes.append(single_scene(rng, obj, colour, position, size_name, say_position=True, say_size=True))
    return scenes


def eval_pair_scenes(count: int = 100, seed: int = 4321) -> list[Scene]:
    """Held-out object pairs, each on a random background and side-by-side layout."""
    rng = np.random.default_rng(seed)
    pairs = held_out_pairs()
    picks = rng.choice(len(pairs), size=min(count, len(pairs)), replace=False)
    scenes = []
    for k in picks:
        a, b = pairs[int(k)]
        if rng.random() < 0.5:
            a, b = b, a
        background = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
        scenes.append(pair_scene(rng, a, b, background, PAIR_LAYOUTS[rng.integers(len(PAIR_LAYOUTS))]))
    return scenes
