"""Read a captioned image dataset stored as arrays: `images.npy` (N x H x W x 3 uint8, memory-mapped),
`scenes.jsonl` (one JSON object per image with its "caption" and any other attributes) and `meta.json`.

huabu-tiny's scene dataset (`huabu tiny data`) is one; ControlNet training reads any folder in this layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from huabu.core.errors import HuabuError

FORMAT_VERSION = 1  # meta.json's "format"
CAPTION_LANGUAGES = ("en", "zh", "mix")


@dataclass
class CaptionedArrays:
    images: np.ndarray  # N x H x W x 3 uint8 (memory-mapped)
    captions: list[str]
    attrs: list[dict]  # each image's other fields in scenes.jsonl
    meta: dict

    def __len__(self) -> int:
        return len(self.captions)

    def captions_in(self, lang: str, seed: int = 0) -> list[str]:
        """The captions a run trains on: "en" (the caption column), "zh" (each record's "caption_zh", as
        `huabu tiny data --world geneval` writes them) or "mix" (per image one of the two, by a fair coin drawn
        from `seed`: a run that wants both for every image re-draws with a new seed each epoch)."""
        if lang == "en":
            return self.captions
        if lang not in CAPTION_LANGUAGES:
            raise HuabuError(f"caption language {lang!r}: use one of {', '.join(CAPTION_LANGUAGES)}")
        if not all("caption_zh" in a for a in self.attrs):
            raise HuabuError("this dataset has no Chinese captions: make one with `huabu tiny data --world geneval`")
        zh = [a["caption_zh"] for a in self.attrs]
        if lang == "zh":
            return zh
        chinese = np.random.default_rng(seed).random(len(zh)) < 0.5
        return [z if c else e for e, z, c in zip(self.captions, zh, chinese)]


def read_captioned_arrays(path: Path) -> CaptionedArrays:
    path = Path(path)
    if not (path / "meta.json").is_file():
        raise HuabuError(f"no scene dataset at {path}: create it with `huabu tiny data --out {path}`")
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise HuabuError(f"the scene dataset at {path} was made by another version: regenerate it with "
                         f"`huabu tiny data`")
    images = np.load(path / "images.npy", mmap_mode="r")
    records = [json.loads(line) for line in (path / "scenes.jsonl").read_text(encoding="utf-8").splitlines()]
    return CaptionedArrays(images, [r.pop("caption") for r in records], records, meta)
