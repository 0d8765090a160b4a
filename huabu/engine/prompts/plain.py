"""Prompts that a transformer (DiT) pipeline encodes itself: SD3 (two CLIPs and T5), FLUX (CLIP and T5), PixArt (T5).

huabu's A1111 prompt encoder (encode.py) builds weighted 75-token CLIP chunks, which fit the UNet models' cross
attention but not these pipelines' text stacks. Here A1111 syntax is reduced to the plain text it stands for and
the pipeline is called with prompt strings, or on SD3 and FLUX with weighted embeddings when the prompt has
emphasis (`(word:1.2)`, huabu.engine.prompts.emphasis); elsewhere emphasis keeps its words and loses its weight (a
warning says so once per model). BREAK becomes a space, and prompt editing / alternation, which would need per-step
embeddings, is refused with one line. `PipelinePrompts` answers what the engine asks of `ScheduledConditioning`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from huabu.core.errors import InvalidRequest
from huabu.engine.denoisers import call_parameters
from huabu.engine.prompts.emphasis import EMPHASIS_FAMILIES, weighted_embeddings
from huabu.engine.prompts.syntax import BREAK, parse_attention, prompt_schedule

log = logging.getLogger(__name__)


def plain_text(text: str) -> tuple[str, bool]:
    """(the prompt's words without emphasis syntax, whether any emphasis weight other than 1 was given)."""
    fragments = parse_attention(text)
    words = " ".join(fragment.strip() for fragment, weight in fragments if (fragment, weight) != BREAK)
    weighted = any(weight != 1.0 for fragment, weight in fragments if (fragment, weight) != BREAK)
    return " ".join(words.split()), weighted


@dataclass
class PipelinePrompts:
    """The prompts of one generation as the pipeline's own prompt arguments, in the shape of
    ScheduledConditioning (one schedule entry each, nothing to swap per step)."""

    positive: list[tuple[int, str]]
    negative: list[tuple[int, str]]
    batch_size: int
    extra: dict[str, Any]  # further pipeline arguments: clip skip where the pipeline takes it
    takes_negative: bool = True  # False for FLUX (guidance distilled; its ControlNet img2img pipeline has none)
    embeddings: tuple[dict, dict] | None = None  # weighted (positive, negative) embeddings instead of the strings

    @classmethod
    def build(cls, model: Any, prompt: str, negative_prompt: str, steps: int, batch_size: int,
              clip_skip: int = 1) -> PipelinePrompts:
        """Plain prompts for `model` (a LoadedModel of a transformer pipeline); LoRA tags must already be stripped."""
        if batch_size < 1:
            raise InvalidRequest(f"batch size must be at least 1, got {batch_size}")
        label, family = model.denoiser.label, model.denoiser.family
        texts, fragments, weighted = [], [], False
        for which, source in (("prompt", prompt), ("negative prompt", negative_prompt)):
            schedule = prompt_schedule(source, steps)
            if len(schedule) > 1:
                raise InvalidRequest(f"the {which} uses prompt editing or alternation ([a:b:step], [a|b]), which "
                                     f"runs on UNet models only so far; this is a {label} model")
            text, has_weights = plain_text(schedule[0][1])
            texts.append(text)
            fragments.append(parse_attention(schedule[0][1]))
            weighted = weighted or has_weights
        params = call_parameters(model.pipeline)
        takes_negative = family != "flux" and "negative_prompt" in params
        if texts[1] and not takes_negative:
            model.notice("negative", f"{label} models have no negative prompt (guidance is distilled); it is ignored")
        extra: dict[str, Any] = {}
        if clip_skip > 1:
            if "clip_skip" in params:  # diffusers counts the layers skipped beyond its default penultimate one
                extra["clip_skip"] = clip_skip - 1
            else:
                model.notice("clip_skip", f"clip skip is ignored on {label} models")
        embeddings = None
        if weighted and family in EMPHASIS_FAMILIES:
            pair = [weighted_embeddings(model.pipeline, family, parts, text, extra.get("clip_skip"))
                    for parts, text in zip(fragments, texts if takes_negative else texts[:1])]
            if all(found is not None for found in pair):
                embeddings = (pair[0], pair[1] if takes_negative else {})
            else:
                model.notice("emphasis-split", f"emphasis weights could not be placed on the {label} tokenizers' "
                                               f"tokens (they join words across a weight's edge); they are ignored")
        elif weighted:
            model.notice("emphasis", f"emphasis weights such as (word:1.2) are ignored on {label} models: the "
                                     f"pipeline's own text encoders read the words only")
        return cls([(steps, texts[0])], [(steps, texts[1])], batch_size, extra, takes_negative, embeddings)

    @property
    def callback_tensor_inputs(self) -> list[str]:
        return []

    def initial_kwargs(self) -> dict[str, Any]:
        """Prompt arguments of the pipeline call (call it with num_images_per_prompt=1: one prompt per image)."""
        if self.embeddings is not None:
            positive, negative = self.embeddings
            kwargs = {name: value.repeat(self.batch_size, *[1] * (value.dim() - 1))
                      for name, value in positive.items()}
            kwargs |= {f"negative_{name}": value.repeat(self.batch_size, *[1] * (value.dim() - 1))
                       for name, value in negative.items()}
            return {**kwargs, **self.extra}
        kwargs = {"prompt": [self.positive[0][1]] * self.batch_size}
        if self.takes_negative:
            kwargs["negative_prompt"] = [self.negative[0][1]] * self.batch_size
        return {**kwargs, **self.extra}

    def step_callback(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        return callback_kwargs
