"""img2img over several input images (A1111's batch tab, and an API call's whole `init_images` list): one run of
the request per image, with the mask of the same position when masks are given (inpaint), image i starting at
seed + i x batch_size x n_iter so every image of the whole batch has its own seed, as a single A1111 batch would.
`folder_script` reads the batch tab's folders (the CLI's --input-dir, the studio's Batch sub-tab)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huabu.core.errors import InvalidRequest
from huabu.core.requests import MAX_SEED, GenerateRequest
from huabu.engine.scripts.common import Run, ScriptOutput, rebuild, run_each

NAME = "img2img batch"  # huabu's own: A1111 has no such script name
MAX_IMAGES = 1000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class Batch:
    images: tuple[str, ...]  # paths or data URLs
    masks: tuple[str, ...] = ()  # none, or one per image


def batch_from_args(args: list[Any] | dict[str, Any]) -> Batch:
    named = dict(args) if isinstance(args, dict) else {"images": args}
    unknown = set(named) - {"images", "masks"}
    if unknown:
        raise InvalidRequest(f"img2img batch has no argument {sorted(unknown)[0]!r}")
    batch = Batch(tuple(named.get("images") or ()), tuple(named.get("masks") or ()))
    if not batch.images:
        raise InvalidRequest("img2img batch has no images")
    if len(batch.images) > MAX_IMAGES:
        raise InvalidRequest(f"img2img batch has {len(batch.images)} images; at most {MAX_IMAGES}")
    if batch.masks and len(batch.masks) != len(batch.images):
        raise InvalidRequest(f"img2img batch has {len(batch.images)} images but {len(batch.masks)} masks")
    return batch


def requests(base: GenerateRequest, args: list[Any] | dict[str, Any]) -> list[GenerateRequest]:
    batch = batch_from_args(args)
    if base.mode == "txt2img":
        raise InvalidRequest("img2img batch needs mode img2img or inpaint")
    per_image = base.batch_size * base.n_iter
    seed = base.seed
    planned = []
    for index, image in enumerate(batch.images):
        fields: dict[str, Any] = {"init_image": image}
        if batch.masks:
            fields.update(mode="inpaint", mask=batch.masks[index])
        if seed != -1:
            fields["seed"] = (seed + index * per_image) % (MAX_SEED + 1)
        planned.append(rebuild(base, **fields))
    return planned


def run(base: GenerateRequest, args: list[Any] | dict[str, Any], generate: Run, folder: Path | None) -> ScriptOutput:
    return run_each(requests(base, args), generate)


def folder_script(input_dir: Path, mask_dir: Path | None = None) -> tuple[list[Path], dict[str, Any]]:
    """A1111's batch tab: the images of `input_dir` in name order, and the script request running each one, with
    the mask of the same file stem from `mask_dir` when given (inpainting)."""
    if not input_dir.is_dir():
        raise InvalidRequest(f"the input folder {input_dir} is not a folder")
    images = sorted(p for p in input_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise InvalidRequest(f"the input folder {input_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    masks: list[Path] = []
    if mask_dir is not None:
        found = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES} \
            if mask_dir.is_dir() else {}
        missing = [image.name for image in images if image.stem not in found]
        if missing:
            raise InvalidRequest(f"the mask folder {mask_dir} has no mask named like {missing[0]}")
        masks = [found[image.stem] for image in images]
    return images, {"name": NAME, "args": {"images": [str(p) for p in images], "masks": [str(p) for p in masks]}}
