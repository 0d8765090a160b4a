"""The one infotext builder for stills and video: the core field table (huabu.core.fields) filled with what the
engine knows at run time (seed, model, LoRA hashes), plus the extensions' fields."""

from __future__ import annotations

from typing import Any

import huabu
from huabu.core import pnginfo
from huabu.core.fields import request_to_infotext_params
from huabu.core.requests import GenerateRequest, VideoRequest
from huabu.engine.embeddings import UsedEmbedding, ti_hashes_text
from huabu.engine.loras import ResolvedLora, lora_hashes_text


def output_params(request: GenerateRequest | VideoRequest, model: Any, loras: list[ResolvedLora],
                  extra: dict[str, Any], seed: int | None = None, strength_used: bool | None = None,
                  subseed: int | None = None, vae_hash: str | None = None,
                  embeddings: list[UsedEmbedding] | None = None) -> dict[str, Any]:
    """The `key: value` fields of one output in A1111's order (None = left out). `model` is a LoadedModel (its
    name and short hash); `seed` and `subseed` default to the request's; `embeddings` the textual inversions used."""
    return request_to_infotext_params(request, seed=seed, model=model.name, model_hash=model.short_hash,
                                      lora_hashes=lora_hashes_text(loras), strength_used=strength_used, extra=extra,
                                      subseed=subseed, vae_hash=vae_hash, ti_hashes=ti_hashes_text(embeddings or []))


def build_infotext(prompt: str, negative: str, params: dict[str, Any]) -> str:
    return pnginfo.create_infotext(prompt, negative, params, huabu.__version__)
