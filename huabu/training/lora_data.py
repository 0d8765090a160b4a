"""The images a LoRA learns from: folder scan, captions, kohya-style aspect-ratio buckets, and which images make the
batch of every step, as a function of (seed, step) so that a resumed run sees exactly the batches it would have.

Layout, as kohya's sd-scripts reads it: images anywhere under the folder, each with an optional caption sidecar
(`cat.png` + `cat.txt`); a sub-folder named `N_name` repeats its images N times per epoch.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from huabu.core.errors import InvalidRequest
from huabu.engine.images import load_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_REPEATS = re.compile(r"^(\d+)_(.+)$")


@dataclass(frozen=True)
class Example:
    path: Path
    caption: str
    folder: str  # the image's folder name, kohya's dataset dir (keys of ss_tag_frequency)
    repeats: int
    size: tuple[int, int]  # original (width, height)
    bucket: tuple[int, int]  # training (width, height), set by assign_buckets


@dataclass
class LoraDataset:
    root: Path
    examples: list[Example]
    buckets: list[tuple[int, int]]  # every candidate bucket (sorted); examples use some of them
    _epochs: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.examples)

    def used_buckets(self) -> dict[tuple[int, int], list[int]]:
        """Bucket -> example indices (each example once), buckets in sorted order."""
        found: dict[tuple[int, int], list[int]] = {}
        for i, example in enumerate(self.examples):
            found.setdefault(example.bucket, []).append(i)
        return dict(sorted(found.items()))

    def batches_per_epoch(self, batch: int) -> int:
        return sum(math.ceil(sum(self.examples[i].repeats for i in idx) / batch)
                   for idx in self.used_buckets().values())

    def batch(self, index: int, batch: int, seed: int) -> list[int]:
        """Example indices of batch number `index` of the run: every batch comes from one bucket; each epoch shuffles
        every bucket and then the order of the batches, both from (seed, epoch)."""
        epoch, position = divmod(index, self.batches_per_epoch(batch))
        key = (epoch, batch, seed)
        if key not in self._epochs:
            self._epochs = {key: self._epoch_batches(epoch, batch, seed)}  # keep one epoch
        return self._epochs[key][position]

    def _epoch_batches(self, epoch: int, batch: int, seed: int) -> list[list[int]]:
        rng = np.random.default_rng([seed, epoch])
        batches = []
        for indices in self.used_buckets().values():
            pool = np.array([i for i in indices for _ in range(self.examples[i].repeats)])
            pool = pool[rng.permutation(len(pool))]
            batches += [pool[i:i + batch].tolist() for i in range(0, len(pool), batch)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """kohya's ss_tag_frequency: per folder, how many captions hold each comma-separated tag."""
        frequency: dict[str, Counter] = {}
        for example in self.examples:
            tags = {tag.strip() for tag in example.caption.split(",") if tag.strip()}
            frequency.setdefault(example.folder, Counter()).update(tags)
        return {folder: dict(counts.most_common()) for folder, counts in frequency.items()}

    def dataset_dirs(self) -> dict[str, dict[str, int]]:
        """kohya's ss_dataset_dirs: per folder, its repeats and image count."""
        dirs: dict[str, dict[str, int]] = {}
        for example in self.examples:
            entry = dirs.setdefault(example.folder, {"n_repeats": example.repeats, "img_count": 0})
            entry["img_count"] += 1
        return dirs

    def bucket_info(self) -> dict:
        """kohya's ss_bucket_info: the buckets used, their image counts, and the mean aspect-ratio error."""
        used = self.used_buckets()
        errors = [abs(e.bucket[0] / e.bucket[1] - e.size[0] / e.size[1]) for e in self.examples]
        return {"buckets": {str(i): {"resolution": list(bucket), "count": len(idx)}
                            for i, (bucket, idx) in enumerate(used.items())},
                "mean_img_ar_error": float(np.mean(errors))}

    def content_hash(self) -> str:
        """sha256 over every image's bytes, caption and repeats, by relative path: names the training data."""
        digest = hashlib.sha256()
        for example in sorted(self.examples, key=lambda e: e.path.relative_to(self.root).as_posix()):
            digest.update(example.path.relative_to(self.root).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(example.path.read_bytes()).digest())
            digest.update(f"{example.caption}\0{example.repeats}\0".encode())
        return digest.hexdigest()


def bucket_resolutions(resolution: int, step: int) -> list[tuple[int, int]]:
    """kohya-style buckets: (width, height) multiples of `step`, sides from resolution/2 to resolution*2 (at least
    `step`), area at most resolution^2; for each width the tallest height that fits, both orientations."""
    area = resolution * resolution
    low, high = max(step, resolution // 2 // step * step), resolution * 2
    found = {(resolution, resolution)}
    for width in range(low, high + 1, step):
        height = min(high, area // width // step * step)
        if height >= low:
            found |= {(width, height), (height, width)}
    return sorted(found)


def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to the image's (as kohya's BucketManager picks)."""
    ratio = size[0] / size[1]
    return min(buckets, key=lambda b: abs(b[0] / b[1] - ratio))


def fit_to_bucket(image: Image.Image, bucket: tuple[int, int]) -> Image.Image:
    """Scale the image to cover the bucket, then crop the centre."""
    width, height = bucket
    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    if size != image.size:
        image = image.resize(size, Image.LANCZOS)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return image.crop((left, top, left + width, top + height))


def to_pixels(image: Image.Image) -> np.ndarray:
    """RGB image -> float32 CHW array in [-1, 1], what SD VAEs encode."""
    return (np.asarray(image, dtype=np.float32) / 127.5 - 1.0).transpose(2, 0, 1)


def caption_for(path: Path, trigger: str | None, template: str | None, root: Path) -> str:
    sidecar = path.with_suffix(".txt")
    if sidecar.is_file():
        try:
            return sidecar.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            raise InvalidRequest(f"caption file {sidecar.relative_to(root).as_posix()} is not UTF-8 text; save it "
                                 f"as UTF-8") from None
    if template is None:
        raise InvalidRequest(f"{path.relative_to(root)} has no caption file {sidecar.name}; write one beside it, or "
                             f"pass --caption-template (e.g. \"a photo of {{trigger}}\" with --trigger WORD)")
    return template.replace("{trigger}", trigger or "")


def load_dataset(root: str | Path, trigger: str | None = None, template: str | None = None) -> LoraDataset:
    """Scan `root` and read every image once (an unreadable one is named in the error); no buckets yet."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InvalidRequest(f"training data folder not found: {root}")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not paths:
        raise InvalidRequest(f"no training images in {root} (looked for {', '.join(IMAGE_SUFFIXES)}, also in "
                             f"sub-folders)")
    examples = []
    for path in paths:
        caption = caption_for(path, trigger, template, root)
        size = load_image(str(path), "training image").size
        folder = path.parent.name if path.parent != root else root.name
        repeats = _REPEATS.match(folder)
        examples.append(Example(path, caption, folder, int(repeats.group(1)) if repeats else 1, size, size))
    if all(example.repeats == 0 for example in examples):
        raise InvalidRequest(f"every folder in {root} repeats its images 0 times (folder names like 0_name)")
    return LoraDataset(root, examples, [])


def assign_buckets(dataset: LoraDataset, resolution: int, step: int) -> LoraDataset:
    """The dataset with every image given the bucket nearest its aspect ratio."""
    buckets = bucket_resolutions(resolution, step)
    examples = [replace(e, bucket=nearest_bucket(e.size, buckets)) for e in dataset.examples]
    return LoraDataset(dataset.root, examples, buckets)
