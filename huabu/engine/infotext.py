"""The one infotext builder for stills and video: A1111's `parameters` text of an output."""

from __future__ import annotations

from typing import Any

import huabu
from huabu.core import pnginfo
from huabu.core.requests import GenerateRequest, VideoRequest
from huabu.engine.loras import ResolvedLora, lora_hashes_text
from huabu.engine.models import LoadedModel


def format_number(value: float) -> str:
    """Numbers in infotexts as A1111 shows them: 7 rather than 7.0."""
    return str(int(value)) if float(value).is_integer() else str(value)


def infotext_params(request: GenerateRequest | VideoRequest, model: LoadedModel, seed: int,
                    loras: list[ResolvedLora], extra: dict[str, Any], uses_strength: bool | None = None
                    ) -> dict[str, Any]:
    """The `key: value` fields of one output, in A1111 1.10's order (None = left out), then the video fields and
    the extensions' `extra`. `uses_strength` defaults to "the mode is not txt2img" for stills."""
    video = isinstance(request, VideoRequest)
    if uses_strength is None:
        uses_strength = not video and request.mode != "txt2img"
    params = {
        "Steps": request.steps,
        "Sampler": request.sampler,
        "Schedule type": request.schedule_type,
        "CFG scale": format_number(request.cfg_scale),
        "Seed": seed,
        "Size": f"{request.width}x{request.height}",
        "Model hash": model.short_hash,
        "Model": model.name,
        "Denoising strength": format_number(request.denoising_strength) if uses_strength else None,
        "Clip skip": request.clip_skip if request.clip_skip > 1 else None,
    }
    if video:
        params.update({"Lora hashes": lora_hashes_text(loras), "Frames": request.frames, "FPS": request.fps})
    else:
        params.update({"Mask blur": request.mask_blur if request.mode == "inpaint" else None,
                       "Lora hashes": lora_hashes_text(loras)})
    return {**params, **extra}


def build_infotext(prompt: str, negative: str, params: dict[str, Any]) -> str:
    return pnginfo.create_infotext(prompt, negative, params, huabu.__version__)
