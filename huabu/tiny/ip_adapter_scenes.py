"""The scenes huabu-tiny's IP-Adapter trains and is measured on: one object of huabu.tiny.world, a reference render
of the same object elsewhere (another position, size and background, recoloured where the glyph takes a colour),
and captions with or without the object's name.

The reference shares only the glyph's shape with its target, so what the adapter can carry from it is identity.
"""

from __future__ import annotations

import numpy as np

from huabu.tiny import scenes as S
from huabu.tiny import world as W

# The world's last 20 objects: never in an adapter's training (`--objects` stops before them), so its measure of
# glyphs nobody trained on
UNSEEN = tuple(range(len(W.OBJECTS) - 20, len(W.OBJECTS)))


def nameless_caption(background: str, position: str | None) -> str:
    """A one-object caption without the object: "in the top left corner on a green background"."""
    where = f"{S.POSITION_PHRASES[position]} " if position else ""
    return f"{where}{W.en_background(background)}"


def _other(rng: np.random.Generator, values: tuple[str, ...], *avoid: str | None) -> str:
    choices = [v for v in values if v not in avoid]
    return choices[int(rng.integers(len(choices)))]


def reference_scene(rng: np.random.Generator, obj: int, position: str, background: str) -> S.Scene:
    """Object `obj` at another position and size on another background, in another colour when it takes one."""
    new_background = _other(rng, S.COLOUR_NAMES, background)
    colour = _other(rng, S.COLOUR_NAMES, new_background) if obj in W.RECOLOURABLE else None
    return W.single(rng, "position", obj, new_background, _other(rng, S.POSITION_NAMES, position),
                    _other(rng, S.SIZE_NAMES), colour)


def reference_image(rng: np.random.Generator, obj: int, position: str, background: str) -> np.ndarray:
    """`reference_scene` rendered (HxWx3 uint8)."""
    return W.render(reference_scene(rng, obj, position, background))
