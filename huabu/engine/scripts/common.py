"""What the scripts share: the output shape, checked changed requests, grid files, collecting runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from huabu.core.requests import GenerateRequest

Run = Callable[[GenerateRequest], Any]  # one request without a script -> engine.generate.GenerationResult


@dataclass
class ScriptOutput:
    """What a script made, shaped as engine.generate.GenerationResult."""

    images: list[Image.Image]
    seeds: list[int]
    infotexts: list[str]
    request_used: GenerateRequest
    model: dict[str, Any]
    paths: list[Path] = field(default_factory=list)
    gallery_ids: list[int] = field(default_factory=list)
    interrupted: bool = False


def rebuild(base: GenerateRequest, **changes: Any) -> GenerateRequest:
    """`base` with fields changed, validated again (one-line InvalidRequest)."""
    data = base.to_data()
    data.update(changes)
    return GenerateRequest.from_data(data)


def save_grid(image: Image.Image, infotext: str, folder: Path, prefix: str) -> Path:
    """A grid PNG with its infotext, named as A1111 names grids (`xyz_grid-0000.png`)."""
    from huabu.core.pnginfo import save_png_atomic
    from huabu.engine.grids import next_grid_path

    return save_png_atomic(image, next_grid_path(folder, prefix), infotext)


def collect(results: list[Any]) -> ScriptOutput:
    """The runs' images, seeds, infotexts and files in order, as one output."""
    first = results[0]
    output = ScriptOutput([], [], [], first.request_used, first.model)
    for result in results:
        output.images += result.images
        output.seeds += result.seeds
        output.infotexts += result.infotexts
        output.paths += result.paths
        output.gallery_ids += result.gallery_ids
        output.interrupted = output.interrupted or result.interrupted
    return output


def run_each(requests: list[GenerateRequest], generate: Run) -> ScriptOutput:
    """Generate each request in turn, stopping after one that was interrupted."""
    results = []
    for request in requests:
        results.append(generate(request))
        if results[-1].interrupted:
            break
    return collect(results)
