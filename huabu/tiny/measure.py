"""Read a scene back out of an image: background colour, where the object is, and which glyph it is.

Scenes are flat colour plus glyphs, so plain image analysis measures prompt adherence exactly, without a learned
judge: the background is the median border colour, the object is what differs from it, and identity is the
nearest glyph template. The same functions score generated images, real scenes and VAE round trips, so the
real-scene figures are the ceilings the model can reach.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from huabu.tiny import scenes as S

_PALETTE = np.array([S.COLOURS[c] for c in S.COLOUR_NAMES], dtype=np.float32)
# A pixel this far (RGB Euclidean) from the background belongs to an object.
OBJECT_THRESHOLD = 60.0


def background_colour(image: np.ndarray, border: int = 2) -> tuple[str, np.ndarray]:
    """The named colour nearest the median of the image's border ring, and that median."""
    h, w, _ = image.shape
    ring = np.concatenate([image[:border].reshape(-1, 3), image[-border:].reshape(-1, 3),
                           image[:, :border].reshape(-1, 3), image[:, -border:].reshape(-1, 3)])
    median = np.median(ring.astype(np.float32), axis=0)
    return S.COLOUR_NAMES[int(np.argmin(((_PALETTE - median) ** 2).sum(1)))], median


def object_mask(image: np.ndarray, background_rgb: np.ndarray) -> np.ndarray:
    return np.linalg.norm(image.astype(np.float32) - background_rgb, axis=-1) > OBJECT_THRESHOLD


def centroid(mask: np.ndarray) -> tuple[float, float] | None:
    ys, xs = np.nonzero(mask)
    return (float(xs.mean()), float(ys.mean())) if len(xs) else None


def nearest_position(xy: tuple[float, float], size: int, names: tuple[str, ...] = S.POSITION_NAMES) -> str:
    """The named position whose box centre (for a glyph of `size`) is nearest to `xy`."""
    centres = {p: np.add(S.anchor_xy(p, size), size / 2) for p in names}
    return min(centres, key=lambda p: float(np.hypot(*(np.asarray(xy) - centres[p]))))


def identify(image: np.ndarray, background_rgb: np.ndarray, xy: tuple[float, float], size: int,
             shift: int = 3, glyphs: Sequence[np.ndarray] | None = None) -> int:
    """Index of the glyph whose template (at `size`, on this background) best matches the window around `xy`:
    of `glyphs` (RGBA at `size`) if given, else of huabu.tiny.scenes' objects."""
    return nearest_glyph(image, background_rgb, xy, size, shift, glyphs)[0]


def nearest_glyph(image: np.ndarray, background_rgb: np.ndarray, xy: tuple[float, float], size: int,
                  shift: int = 3, glyphs: Sequence[np.ndarray] | None = None) -> tuple[int, float]:
    """`identify`'s index with its template's mean squared error over the window (the best of the shifts)."""
    bg = background_rgb.astype(np.float32) / 255.0
    img = image.astype(np.float32) / 255.0
    pad = size // 2 + shift
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    cx, cy = round(xy[0]) + pad, round(xy[1]) + pad
    windows = []
    for dy in range(-shift, shift + 1):
        for dx in range(-shift, shift + 1):
            x0, y0 = cx + dx - size // 2, cy + dy - size // 2
            windows.append(padded[y0 : y0 + size, x0 : x0 + size])
    windows = np.stack(windows)  # (shifts, size, size, 3)
    glyphs = [S.glyph(k, size) for k in range(len(S.OBJECTS))] if glyphs is None else glyphs
    best, best_err = 0, np.inf
    for k, g in enumerate(glyphs):
        template = g[..., :3] * g[..., 3:] + bg * (1 - g[..., 3:])
        err = float(((windows - template) ** 2).mean(axis=(1, 2, 3)).min())
        if err < best_err:
            best, best_err = k, err
    return best, best_err


@dataclass
class SingleReading:
    background: str
    position: str | None
    obj: int | None


def read_single(image: np.ndarray, size: int) -> SingleReading:
    """Background, position and identity of a one-object scene whose glyph size is known from its prompt."""
    name, bg = background_colour(image)
    xy = centroid(object_mask(image, bg))
    if xy is None:
        return SingleReading(name, None, None)
    return SingleReading(name, nearest_position(xy, size), identify(image, bg, xy, size))


def half_mask(shape: tuple[int, ...], side: str) -> np.ndarray:
    """The left, right, top or bottom half of an image of `shape`."""
    region = np.zeros(shape[:2], bool)
    half = shape[1] // 2
    if side == "left":
        region[:, :half] = True
    elif side == "right":
        region[:, half:] = True
    elif side == "top":
        region[:half] = True
    else:
        region[half:] = True
    return region


def read_pair(image: np.ndarray, layout: tuple[str, str],
              glyphs: Sequence[np.ndarray] | None = None) -> tuple[int | None, int | None]:
    """Identities found in the two halves of a two-object scene (left/right or top/bottom); `glyphs` as identify's."""
    _, bg = background_colour(image)
    mask = object_mask(image, bg)
    found = []
    for side in layout:
        xy = centroid(mask & half_mask(image.shape, side))
        found.append(None if xy is None else identify(image, bg, xy, S.PAIR_SIZE, glyphs=glyphs))
    return found[0], found[1]


def blobs(image: np.ndarray, min_area: int = 12) -> list[tuple[float, float]]:
    """Centroids of the separate objects: connected parts of the object mask (parts 2 px apart or nearer joined),
    specks under `min_area` pixels dropped."""
    _, bg = background_colour(image)
    mask = object_mask(image, bg).astype(np.uint8)
    n, labels, _, centroids = cv2.connectedComponentsWithStats(cv2.dilate(mask, np.ones((3, 3), np.uint8)))
    areas = np.bincount(labels[mask > 0], minlength=n)
    return [(float(centroids[k][0]), float(centroids[k][1])) for k in range(1, n) if areas[k] >= min_area]


def colour_votes(pixels: np.ndarray) -> np.ndarray:
    """How many of `pixels` (N x 3, 0-255) are nearest each named colour, in COLOUR_NAMES order."""
    nearest = np.argmin(((pixels.astype(np.float32)[:, None] - _PALETTE[None]) ** 2).sum(-1), axis=1)
    return np.bincount(nearest, minlength=len(_PALETTE))


def dominant_colour(image: np.ndarray, mask: np.ndarray, background: str) -> str | None:
    """The named colour most masked pixels are nearest to, the background's own left out (None if no pixels)."""
    counts = colour_votes(image[mask])
    counts[S.COLOUR_NAMES.index(background)] = 0
    return S.COLOUR_NAMES[int(counts.argmax())] if counts.any() else None


def score_singles(images: list[np.ndarray], scenes: list[S.Scene]) -> dict[str, float]:
    """Background, position, identity and all-three accuracy of images generated for one-object scenes."""
    bg = pos = ident = all3 = 0
    for image, scene in zip(images, scenes):
        placed = scene.objects[0]
        reading = read_single(image, placed.size)
        ok = (reading.background == scene.background, reading.position == placed.position, reading.obj == placed.obj)
        bg, pos, ident, all3 = bg + ok[0], pos + ok[1], ident + ok[2], all3 + all(ok)
    n = max(1, len(scenes))
    return {"background_accuracy": bg / n, "position_accuracy": pos / n, "identity_top1": ident / n,
            "all_three_accuracy": all3 / n}


def score_pairs(images: list[np.ndarray], scenes: list[S.Scene]) -> float:
    """How often both objects of a two-object prompt appear on their asked sides."""
    hits = 0
    for image, scene in zip(images, scenes):
        a, b = scene.attrs["objects"]
        hits += read_pair(image, tuple(scene.attrs["positions"])) == (a, b)
    return hits / max(1, len(scenes))
