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


@dataclass
class CaptionedArrays:
    images: np.ndarray  # N x H x W x 3 uint8 (memory-mapped)
    captions: list[str]
    attrs: list[dict]  # each image's other fields in scenes.jsonl
    meta: dict

    def __len__(self) -> int:
        return len(self.captions)


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
