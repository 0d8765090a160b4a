"""Write and read the captioned scene dataset that huabu-tiny trains on.

A dataset folder holds `images.npy` (N x 64 x 64 x 3 uint8, memory-mapped when read), `scenes.jsonl` (caption and
attributes per image) and `meta.json` (seed, count, object/colour/position vocabularies). It is a pure function of
(seed, count), so it is never committed: `huabu tiny data` regenerates it in about a minute.

`world="geneval"` (`huabu tiny data --world geneval`) writes the scenes of huabu.tiny.world instead: each record
has its English caption in "caption", as every reader expects, and its Chinese one in "caption_zh"; a training run
picks its language with `CaptionedArrays.captions_in("en" | "zh" | "mix")`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from huabu.core.atomic import atomic_dir
from huabu.core.errors import HuabuError
from huabu.tiny import scenes as S
from huabu.tiny import text_scenes as T
from huabu.tiny import world as W
from huabu.training.captioned_arrays import FORMAT_VERSION, CaptionedArrays, read_captioned_arrays


def _meta(seed: int, count: int, text: bool = False, world: str = "shipped") -> dict:
    meta = {"format": FORMAT_VERSION, "seed": seed, "count": count,
            "image_size": T.TEXT_IMAGE_SIZE if text else S.IMAGE_SIZE, "objects": list(S.OBJECT_NAMES),
            "colours": list(S.COLOUR_NAMES), "positions": list(S.POSITION_NAMES), "sizes": list(S.SIZE_NAMES)}
    if text:
        meta["text_vocabulary"] = T.VOCABULARY
    if world == "geneval":
        meta.update(world=world, objects=list(W.OBJECT_NAMES), categories=list(W.CATEGORIES),
                    languages=list(W.LANGUAGES))
    return meta


def _scene(seed: int, index: int, text: bool, world: str) -> tuple[np.ndarray, dict]:
    if world == "geneval":
        scene = W.training_scene(seed, index)
        return W.render(scene), {"caption": scene.caption, **scene.attrs}
    if text:
        scene = T.training_text_scene(seed, index)
        return T.render_text_scene(scene), {"caption": scene.caption, **scene.attrs}
    scene = S.training_scene(seed, index)
    return S.render(scene.background, scene.objects), {"caption": scene.caption, **scene.attrs}


def write_dataset(out_dir: Path, count: int, seed: int = 0, progress: bool = True, text: bool = False,
                  world: str = "shipped") -> Path:
    """Render `count` training scenes into `out_dir`, atomically: a half-written folder never replaces a good one.
    `text` renders the text scenes of huabu.tiny.text_scenes (128 x 128, with `text_boxes`) instead, `world`
    "geneval" those of huabu.tiny.world."""
    if text and world != "shipped":
        raise HuabuError("text scenes exist in the shipped world only: leave out --world or --text")
    out_dir = Path(out_dir)
    meta_path = out_dir / "meta.json"
    meta = _meta(seed, count, text, world)
    if meta_path.is_file() and json.loads(meta_path.read_text()) == meta:
        return out_dir
    size = T.TEXT_IMAGE_SIZE if text else S.IMAGE_SIZE
    with atomic_dir(out_dir) as tmp:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                           shape=(count, size, size, 3))
        with open(tmp / "scenes.jsonl", "w", encoding="utf-8") as f:
            for i in tqdm(range(count), desc="rendering scenes", disable=not progress, mininterval=1.0):
                images[i], record = _scene(seed, i, text, world)
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        images.flush()
        del images
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return out_dir


def load_dataset(path: Path) -> CaptionedArrays:
    """The scene dataset at `path`, checked against this version's scene vocabulary."""
    data = read_captioned_arrays(path)
    objects = W.OBJECT_NAMES if data.meta.get("world") == "geneval" else S.OBJECT_NAMES
    if data.meta.get("objects") != list(objects):
        raise HuabuError(f"the scene dataset at {path} was made by another version: regenerate it with "
                         f"`huabu tiny data`")
    return data
