"""Data for huabu-tiny's two LoRA demonstrations, rendered by the scene generator and deterministic from a seed:

- style: a festive red-and-gold paper-cut look. Every object becomes a flat red paper silhouette with a gold outline
  and a lattice of small cut-out diamonds; backgrounds keep their named colour (except red, on which red paper would
  vanish), so background and position adherence stay measurable. Captions: the scene's own + ", paper-cut style".
- subject: the Spring Festival dragon (U+1F409), a glyph huabu-tiny never saw, at named positions, sizes and
  backgrounds, captioned with a trigger word: "a small hbdragon on the left on a blue background". A fixed third of
  the (background, position) combinations is held out for evaluation.
- large: the scenes huabu-tiny was trained on, drawn at 128 x 128 (every position and size doubled) with their own
  captions, for a LoRA to carry the 64 px model to 128 px (tried, not shipped: docs/training-notes.md).

`write_lora_data` writes either as a kohya-style folder (name.png + name.txt) that `huabu train lora` reads.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from huabu.core.atomic import atomic_dir
from huabu.core.errors import InvalidRequest
from huabu.tiny import scenes as S

PAPER_RED = (196, 18, 32)
GOLD = (236, 184, 48)
STYLE_SUFFIX = ", paper-cut style"
STYLE_BACKGROUNDS = tuple(c for c in S.COLOUR_NAMES if c != "red")
DRAGON = "\U0001F409"
TRIGGER = "hbdragon"
SUBJECT_HELD_OUT = 1 / 3  # share of (background, position) combinations never shown in the subject data
KINDS = ("style", "subject", "large")
DEFAULT_COUNTS = {"style": 160, "subject": 16, "large": 4000}
_META = "lora-data.json"


def _papercut(alpha: np.ndarray) -> np.ndarray:
    """RGBA float32 paper-cut of a glyph mask: red fill, 1 px gold outline, diamond holes 7 px apart inside."""
    shape = (alpha > 0.5).astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    inner = cv2.erode(shape, kernel).astype(bool)
    deep = cv2.erode(shape, kernel, iterations=3).astype(bool)  # holes keep 2 px of paper around them
    size = alpha.shape[0]
    yy, xx = np.mgrid[:size, :size] - size // 2
    holes = deep & (np.abs(xx % 7 - 3) + np.abs(yy % 7 - 3) <= 1)
    out = np.zeros((*alpha.shape, 4), np.float32)
    out[..., :3] = np.where(inner[..., None], PAPER_RED, GOLD)
    out[..., :3] /= 255.0
    out[..., 3] = shape.astype(bool) & ~holes
    return out


@cache
def papercut_glyph(obj: int, size: int) -> np.ndarray:
    """Object `obj` as a paper-cut at `size` px (RGBA float32, as huabu.tiny.scenes.glyph)."""
    return _papercut(S.glyph(obj, size)[..., 3])


def dragon_glyph(size: int) -> np.ndarray:
    """The dragon emoji drawn as huabu.tiny.scenes draws its objects."""
    return S.char_glyph(DRAGON, size)


def render_papercut(scene: S.Scene) -> np.ndarray:
    return S.compose(scene.background, [(papercut_glyph(p.obj, p.size), p.x, p.y) for p in scene.objects])


# --- style --------------------------------------------------------------------------------------------------

def style_scenes(count: int, seed: int = 11) -> list[S.Scene]:
    """Training scenes of the style data: the training stream of `seed` (held-out combinations never occur),
    red backgrounds skipped, captions with the style suffix."""
    scenes = []
    for index in itertools.count():
        if len(scenes) == count:
            return scenes
        scene = S.training_scene(seed, index)
        if scene.background in STYLE_BACKGROUNDS:
            scenes.append(S.Scene(scene.background, scene.objects, scene.caption + STYLE_SUFFIX, scene.attrs))
    return scenes


def style_eval_scenes(count: int) -> list[S.Scene]:
    """Held-out one-object scenes (huabu.tiny.scenes' eval triples) on style backgrounds, captions unchanged."""
    pool = [scene for scene in S.eval_single_scenes(3 * count) if scene.background in STYLE_BACKGROUNDS]
    return pool[:count]


# --- subject ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SubjectScene:
    background: str
    position: str
    size_name: str
    x: int
    y: int
    caption: str

    @property
    def size(self) -> int:
        return S.SIZES[self.size_name]


def is_held_out_subject(background: str, position: str) -> bool:
    return S.stable_fraction("subject", background, position) < SUBJECT_HELD_OUT


def _subject_scenes(combos: list[tuple[str, str]], count: int, rng: np.random.Generator) -> list[SubjectScene]:
    scenes = []
    for k in range(count):
        background, position = combos[k % len(combos)]
        size_name = S.SIZE_NAMES[k % len(S.SIZE_NAMES)] if k < len(combos) else S.SIZE_NAMES[rng.integers(2)]
        size = S.SIZES[size_name]
        x, y = S.jitter(rng, *S.anchor_xy(position, size), size)
        noun = f"{size_name} {TRIGGER}"
        caption = (f"{S.article(noun)} {noun} {S.POSITION_PHRASES[position]} on {S.article(background)} {background} "
                   f"background")
        scenes.append(SubjectScene(background, position, size_name, x, y, caption))
    return scenes


def subject_scenes(count: int, seed: int = 0) -> list[SubjectScene]:
    """`count` dragon scenes on (background, position) combinations outside the held-out third, shuffled by
    `seed`, sizes alternating."""
    rng = np.random.default_rng([seed, 1409])
    combos = [c for c in itertools.product(S.COLOUR_NAMES, S.POSITION_NAMES) if not is_held_out_subject(*c)]
    return _subject_scenes([combos[i] for i in rng.permutation(len(combos))], count, rng)


def subject_eval_scenes(count: int, seed: int = 2024) -> list[SubjectScene]:
    """Dragon scenes on held-out (background, position) combinations (each once, up to `count`)."""
    rng = np.random.default_rng(seed)
    combos = [c for c in itertools.product(S.COLOUR_NAMES, S.POSITION_NAMES) if is_held_out_subject(*c)]
    combos = [combos[i] for i in rng.permutation(len(combos))]
    return _subject_scenes(combos, min(count, len(combos)), rng)


def render_subject(scene: SubjectScene) -> np.ndarray:
    return S.compose(scene.background, [(dragon_glyph(scene.size), scene.x, scene.y)])


# --- writing ------------------------------------------------------------------------------------------------

def write_lora_data(kind: str, out: Path, count: int | None = None, seed: int | None = None) -> Path:
    """Write the `kind` (one of KINDS) data as name.png + name.txt pairs into `out`, atomically. A folder already
    there is replaced only when it holds data written by this function."""
    if kind not in KINDS:
        raise InvalidRequest(f"LoRA data kind must be {', '.join(KINDS)}, got {kind!r}")
    count = DEFAULT_COUNTS[kind] if count is None else count
    if count < 1:
        raise InvalidRequest(f"count must be at least 1, got {count}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / _META).is_file():
        raise InvalidRequest(f"{out} exists and does not hold huabu LoRA data; pick an empty or new --out folder")
    if kind == "style":
        seed = 11 if seed is None else seed
        items = [(f"papercut-{i:04d}", render_papercut(s), s.caption) for i, s in enumerate(style_scenes(count, seed))]
    elif kind == "large":
        seed = 7 if seed is None else seed  # not the UNet's own data seed: other scenes of the same world
        scenes = (S.training_scene(seed, i) for i in range(count))  # rendered one at a time as they are written
        items = ((f"large-{i:05d}", S.render_scaled(s, 2), s.caption) for i, s in enumerate(scenes))
    else:
        seed = 0 if seed is None else seed
        items = [(f"{TRIGGER}-{i:03d}", render_subject(s), s.caption)
                 for i, s in enumerate(subject_scenes(count, seed))]
    with atomic_dir(out) as tmp:
        for name, image, caption in items:
            Image.fromarray(image).save(tmp / f"{name}.png")
            (tmp / f"{name}.txt").write_text(caption + "\n", encoding="utf-8")
        (tmp / _META).write_text(json.dumps({"kind": kind, "count": count, "seed": seed}), encoding="utf-8")
    return out
