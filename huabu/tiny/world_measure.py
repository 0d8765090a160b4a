"""Reading scenes of huabu.tiny.world back out of an image, one check per GenEval category.

Built on huabu.tiny.measure's readers: the background is the border's colour, objects are what differ from it,
identity is the nearest glyph template among the world's objects. Counting counts the separate blobs and
identifies each; a colour attribute is the named colour most of the object's pixels are nearest to, and the
object is then identified among the recolourable glyphs tinted to that colour, so "a blue automobile" needs both
a blue object and an automobile's shape.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from huabu.tiny import measure as M
from huabu.tiny import scenes as S
from huabu.tiny import world as W


@cache
def _glyphs(size: int, colour: str | None = None, among: tuple[int, ...] | None = None
            ) -> tuple[tuple[int, ...], tuple[np.ndarray, ...]]:
    """The candidates of identify: every object (or those `among`) in its own colours, or the recolourable ones
    tinted to `colour`."""
    objs = (among or tuple(range(len(W.OBJECTS)))) if colour is None else W.RECOLOURABLE
    return objs, tuple(W.glyph(k, size, colour) for k in objs)


def identify(image: np.ndarray, bg: np.ndarray, xy: tuple[float, float], size: int,
             colour: str | None = None, among: tuple[int, ...] | None = None) -> int:
    """The object drawn at `xy`: the nearest glyph template of all objects, or of those `among`."""
    objs, glyphs = _glyphs(size, colour, among)
    return objs[M.identify(image, bg, xy, size, glyphs=glyphs)]


def identify_any_size(image: np.ndarray, bg: np.ndarray, xy: tuple[float, float],
                      among: tuple[int, ...] | None = None) -> int:
    """`identify` at whichever of the world's object sizes fits best: for images whose prompt says no size."""
    found = []
    for size in S.SIZES.values():
        objs, glyphs = _glyphs(size, None, among)
        k, err = M.nearest_glyph(image, bg, xy, size, glyphs=glyphs)
        found.append((err, objs[k]))
    return min(found)[1]


def read_coloured(image: np.ndarray, background: str, bg: np.ndarray, mask: np.ndarray,
                  size: int) -> tuple[int, str] | None:
    """(object, colour) of the recoloured object in `mask`, or None where nothing is there."""
    xy = M.centroid(mask)
    colour = M.dominant_colour(image, mask, background)
    return None if xy is None or colour is None else (identify(image, bg, xy, size, colour), colour)


def _pairs_read(image: np.ndarray, read) -> list[list]:
    """What `read(mask of one half)` finds in both halves, for each pair layout."""
    background, bg = M.background_colour(image)
    mask = M.object_mask(image, bg)
    return [[read(background, bg, mask & M.half_mask(image.shape, side)) for side in layout]
            for layout in S.PAIR_LAYOUTS]


def check(image: np.ndarray, scene: S.Scene) -> bool:
    """Whether `image` shows what its scene's caption asks, by the scene's category (the background apart)."""
    a = scene.attrs
    category, objs, size = a["category"], a["objects"], scene.objects[0].size
    if category == "counting":
        found = M.blobs(image)
        _, bg = M.background_colour(image)
        return len(found) == len(objs) and all(identify(image, bg, xy, size) == objs[0] for xy in found)
    if category == "two_objects":
        def read(_, bg, mask):
            xy = M.centroid(mask)
            return None if xy is None else identify(image, bg, xy, size)
        return any(sorted(found, key=str) == sorted(objs, key=str) for found in _pairs_read(image, read))
    if category == "colour_attribution":
        asked = sorted(zip(objs, a["colours"]), key=str)
        return any(sorted(found, key=str) == asked
                   for found in _pairs_read(image, lambda name, bg, mask: read_coloured(image, name, bg, mask, size)))
    background, bg = M.background_colour(image)
    mask = M.object_mask(image, bg)
    if category == "colours":
        return read_coloured(image, background, bg, mask, size) == (objs[0], a["colours"][0])
    xy = M.centroid(mask)
    if xy is None or identify(image, bg, xy, size) != objs[0]:
        return False
    return category == "single_object" or M.nearest_position(xy, size) == a["positions"][0]


def score(images: list[np.ndarray], scenes: list[S.Scene]) -> dict[str, float]:
    """Per category, the fraction of images that pass `check`; and "background", the background colour's accuracy
    over all of them."""
    hits: dict[str, list[bool]] = {}
    for image, scene in zip(images, scenes):
        hits.setdefault(scene.attrs["category"], []).append(check(image, scene))
        hits.setdefault("background", []).append(M.background_colour(image)[0] == scene.background)
    return {k: float(np.mean(v)) for k, v in hits.items()}
