"""Moving scenes for motion-module training: one huabu-tiny glyph moving left, right, up or down, growing or
shrinking on a flat background, captioned like "a rocket moving up on a black background".

Like huabu.tiny.scenes, every clip is a pure function of (seed, index), and a fixed tenth of the
(object, background, motion) triples is held out: never used for training, used for evaluation.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from huabu.tiny import scenes as S

MOTIONS = ("left", "right", "up", "down", "grow", "shrink")
MOTION_PHRASES = {"left": "moving left", "right": "moving right", "up": "moving up", "down": "moving down",
                  "grow": "growing", "shrink": "shrinking"}
FRAMES = 16
MOVING_SIZE = S.SIZES["small"]  # glyph size of objects that travel (leaves 34 px of travel at 64x64)
GROW_FROM, GROW_TO = (14, 20), (36, 44)  # size ranges at the small and the large end of growing/shrinking
MIN_TRAVEL = 0.6  # a travelling object covers at least this share of the free travel
HELD_OUT_FRACTION = 0.1


@dataclass(frozen=True)
class MovingScene:
    background: str
    obj: int
    motion: str
    frames: tuple[tuple[S.Placed, ...], ...]  # the objects of each frame
    caption: str


def motion_caption(obj: int, motion: str, background: str) -> str:
    name = S.OBJECT_NAMES[obj]
    return f"{S.article(name)} {name} {MOTION_PHRASES[motion]} on {S.article(background)} {background} background"


def is_held_out_motion(obj: int, background: str, motion: str) -> bool:
    """The fixed held-out object-background-motion triples: never rendered for training."""
    return S.stable_fraction("motion", S.OBJECT_NAMES[obj], background, motion) < HELD_OUT_FRACTION


def held_out_motions() -> list[tuple[int, str, str]]:
    triples = itertools.product(range(len(S.OBJECTS)), S.COLOUR_NAMES, MOTIONS)
    return [t for t in triples if is_held_out_motion(*t)]


def _ramp(start: float, end: float, frames: int) -> list[int]:
    return [round(start + (end - start) * k / max(1, frames - 1)) for k in range(frames)]


def moving_scene(rng: np.random.Generator, obj: int, background: str, motion: str, frames: int = FRAMES,
                 image_size: int = S.IMAGE_SIZE) -> MovingScene:
    """One clip: a straight, evenly paced path (or size ramp) drawn with `rng`, kept fully inside the frame."""
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}; one of {', '.join(MOTIONS)}")
    lo = S.MARGIN
    if motion in ("grow", "shrink"):
        small, large = int(rng.integers(*GROW_FROM)), int(rng.integers(*GROW_TO))
        centre_lo, centre_hi = lo + large / 2, image_size - lo - large / 2
        cx, cy = rng.uniform(centre_lo, centre_hi, size=2)
        sizes = _ramp(small, large, frames) if motion == "grow" else _ramp(large, small, frames)
        placed = [S.Placed(obj, round(cx - s / 2), round(cy - s / 2), s, "", None) for s in sizes]
    else:
        size = MOVING_SIZE
        hi = image_size - size - lo
        length = rng.uniform(MIN_TRAVEL, 1.0) * (hi - lo)
        start = rng.uniform(lo, hi - length)
        across = int(rng.integers(lo, hi + 1))
        path = _ramp(start, start + length, frames)
        if motion in ("left", "up"):
            path = path[::-1]
        if motion in ("left", "right"):
            placed = [S.Placed(obj, p, across, size, "", None) for p in path]
        else:
            placed = [S.Placed(obj, across, p, size, "", None) for p in path]
    return MovingScene(background, obj, motion, tuple((p,) for p in placed), motion_caption(obj, motion, background))


def render_moving(scene: MovingScene, image_size: int = S.IMAGE_SIZE) -> np.ndarray:
    """The clip as uint8 [frames, H, W, 3]."""
    return np.stack([S.render(scene.background, objects, image_size) for objects in scene.frames])


def training_moving_scene(seed: int, index: int, frames: int = FRAMES) -> MovingScene:
    """Clip `index` of the training stream for `seed`: never a held-out triple."""
    rng = np.random.default_rng([seed, index, 7])  # 7: a stream apart from huabu.tiny.scenes' stills
    while True:
        obj = int(rng.integers(len(S.OBJECTS)))
        background = S.COLOUR_NAMES[rng.integers(len(S.COLOUR_NAMES))]
        motion = MOTIONS[rng.integers(len(MOTIONS))]
        if not is_held_out_motion(obj, background, motion):
            return moving_scene(rng, obj, background, motion, frames)


def training_clip(seed: int, index: int, frames: int = FRAMES) -> tuple[np.ndarray, str]:
    """(frames uint8 [F, 64, 64, 3], caption) of training clip `index`: the data `huabu tiny train motion` trains on."""
    scene = training_moving_scene(seed, index, frames)
    return render_moving(scene), scene.caption


def eval_moving_scenes(count: int = 120, seed: int = 2468, frames: int = FRAMES) -> list[MovingScene]:
    """Clips of held-out triples, every motion equally often (as far as `count` allows)."""
    rng = np.random.default_rng(seed)
    by_motion = {m: [t for t in held_out_motions() if t[2] == m] for m in MOTIONS}
    scenes = []
    for k in range(count):
        motion = MOTIONS[k % len(MOTIONS)]
        obj, background, _ = by_motion[motion][int(rng.integers(len(by_motion[motion])))]
        scenes.append(moving_scene(rng, obj, background, motion, frames))
    return scenes
