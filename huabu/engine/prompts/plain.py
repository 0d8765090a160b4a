"""Prompts that a transformer (DiT) pipeline encodes itself: SD3 (two CLIPs and T5), FLUX (CLIP and T5), PixArt (T5).

huabu's A1111 prompt encoder (encode.py) builds weighted 75-token CLIP chunks, which fit the UNet models' cross
attention but not these pipelines' text stacks. Here A1111 syntax is reduced to the plain text it stands for (BREAK
becomes a space) and the pipeline is called with prompt strings. On SD3 and FLUX a prompt with emphasis
(`(word:1.2)`, huabu.engine.prompts.emphasis) or prompt editing / alternation is passed as embeddings instead, one
set per schedule entry, swapped by the step callback as ScheduledConditioning does for UNet models; where a
pipeline does not let the callback replace the pooled vector (SD3's img2img / inpaint / ControlNet pipelines,
FLUX's), it stays the first entry's and a warning says so. On other transformers (PixArt) emphasis keeps its words
and loses its weight (a warning says so once per model) and prompt editing is refused with one line.
`PipelinePrompts` answers what the engine asks of `ScheduledConditioning`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from huabu.core.errors import InvalidRequest
from huabu.engine.denoisers import call_parameters
from huabu.engine.prompts.emphasis import EMPHASIS_FAMILIES, weighted_embeddings
from huabu.engine.prompts.syntax import BREAK, parse_attention, prompt_schedule, schedule_index

log = logging.getLogger(__name__)


def plain_text(text: str) -> tuple[str, bool]:
    """(the prompt's words without emphasis syntax, whether any emphasis weight other than 1 was given)."""
    fragments = parse_attention(text)
    words = " ".join(fragment.strip() for fragment, weight in fragments if (fragment, weight) != BREAK)
    weighted = any(weight != 1.0 for fragment, weight in fragments if (fragment, weight) != BREAK)
    return " ".join(words.split()), weighted


@dataclass
class PipelinePrompts:
    """The prompts of one generation as the pipeline's own prompt arguments, in the shape of ScheduledConditioning:
    (end step, prompt text) schedules, and for SD3 / FLUX with emphasis or a schedule, each text's embeddings."""

    positive: list[tuple[int, str]]
    negative: list[tuple[int, str]]  # [(steps, "")] when the model takes no negative prompt
    batch_size: int
    extra: dict[str, Any]  # further pipeline arguments: clip skip where the pipeline takes it
    takes_negative: bool = True  # False for FLUX (guidance distilled; its ControlNet img2img pipeline has none)
    encoded: dict[str, dict[str, Any]] | None = None  # text -> prompt_embeds / pooled_prompt_embeds (batch 1)
    _swaps: dict = field(default_factory=dict, init=False, repr=False)  # built CFG batches, by entry
    _pooled_warned: bool = field(default=False, init=False, repr=False)

    @classmethod
    def build(cls, model: Any, prompt: str, negative_prompt: str, steps: int, batch_size: int,
              clip_skip: int = 1) -> PipelinePrompts:
        """The prompts for `model` (a LoadedModel of a transformer pipeline); LoRA tags must already be stripped."""
        if batch_size < 1:
            raise InvalidRequest(f"batch size must be at least 1, got {batch_size}")
        label, family = model.denoiser.label, model.denoiser.family
        params = call_parameters(model.pipeline)
        takes_negative = family != "flux" and "negative_prompt" in params
        schedules = [prompt_schedule(prompt, steps), prompt_schedule(negative_prompt, steps)]
        if any(plain_text(text)[0] for _, text in schedules[1]) and not takes_negative:
            model.notice("negative", f"{label} models have no negative prompt (guidance is distilled); it is ignored")
        if not takes_negative:
            schedules[1] = [(steps, "")]
        extra: dict[str, Any] = {}
        if clip_skip > 1:
            if "clip_skip" in params:  # diffusers counts the layers skipped beyond its default penultimate one
                extra["clip_skip"] = clip_skip - 1
            else:
                model.notice("clip_skip", f"clip skip is ignored on {label} models")
        texts = {text for schedule in schedules[:2 if takes_negative else 1] for _, text in schedule}
        weighted = any(plain_text(text)[1] for text in texts)
        scheduled = any(len(schedule) > 1 for schedule in schedules)
        if family not in EMPHASIS_FAMILIES:
            if scheduled:
                raise InvalidRequest(f"prompt editing or alternation ([a:b:step], [a|b]) runs on UNet, SD3 and FLUX "
                                     f"models only; this is a {label} model")
            if weighted:
                model.notice("emphasis", f"emphasis weights such as (word:1.2) are ignored on {label} models: the "
                                         f"pipeline's own text encoders read the words only")
            return cls(*schedules, batch_size, extra, takes_negative)
        if not (weighted or scheduled):
            return cls(*schedules, batch_size, extra, takes_negative)
        encoded = {text: _embeddings(model, family, text, extra.get("clip_skip")) for text in texts}
        return cls(*schedules, batch_size, extra, takes_negative, encoded)

    @property
    def callback_tensor_inputs(self) -> list[str]:
        return ["prompt_embeds", "pooled_prompt_embeds"] if self.is_scheduled else []

    @property
    def is_scheduled(self) -> bool:
        return len(self.positive) > 1 or len(self.negative) > 1

    def _indices(self, step: int) -> tuple[int, int]:
        return (schedule_index([end for end, _ in self.positive], step),
                schedule_index([end for end, _ in self.negative], step))

    def _batched(self, text: str, name: str) -> Any:
        value = self.encoded[text][name]
        return value.repeat(self.batch_size, *[1] * (value.dim() - 1))

    def initial_kwargs(self) -> dict[str, Any]:
        """Prompt arguments of the pipeline call (call it with num_images_per_prompt=1: one prompt per image)."""
        positive, negative = self.positive[0][1], self.negative[0][1]
        if self.encoded is not None:
            kwargs = {name: self._batched(positive, name) for name in self.encoded[positive]}
            if self.takes_negative:
                kwargs |= {f"negative_{name}": self._batched(negative, name) for name in self.encoded[negative]}
            return {**kwargs, **self.extra}
        kwargs = {"prompt": [plain_text(positive)[0]] * self.batch_size}
        if self.takes_negative:
            kwargs["negative_prompt"] = [plain_text(negative)[0]] * self.batch_size
        return {**kwargs, **self.extra}

    def step_callback(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        """diffusers `callback_on_step_end`: the next schedule entry's embeddings when it changes. Under CFG the
        pipeline holds torch.cat([negative, positive]) in "prompt_embeds" and "pooled_prompt_embeds"."""
        import torch

        following = self._indices(step + 1)
        if following == self._indices(step):
            return callback_kwargs
        current = callback_kwargs["prompt_embeds"]
        guided = current.shape[0] == 2 * self.batch_size
        for name in ("prompt_embeds", "pooled_prompt_embeds"):
            if name not in callback_kwargs:
                self._warn_pooled_once()
                continue
            key = (name, following, guided)
            if key not in self._swaps:
                value = self._batched(self.positive[following[0]][1], name)
                if guided:
                    value = torch.cat([self._batched(self.negative[following[1]][1], name), value])
                self._swaps[key] = value.to(device=current.device, dtype=callback_kwargs[name].dtype)
            callback_kwargs[name] = self._swaps[key]
        return callback_kwargs

    def _warn_pooled_once(self) -> None:
        if not self._pooled_warned:
            self._pooled_warned = True
            log.warning("this pipeline lets a step change the sequence embeddings but not the pooled text vector: "
                        "after a prompt edit the pooled vector stays the first prompt's")


def _embeddings(model: Any, family: str, text: str, clip_skip: int | None) -> dict[str, Any]:
    """Weighted embeddings of one schedule entry; unweighted (with a warning) when the weights cannot be placed."""
    plain, _ = plain_text(text)
    found = weighted_embeddings(model.pipeline, family, parse_attention(text), plain, clip_skip)
    if found is None:
        model.notice("emphasis-split", f"emphasis weights could not be placed on the {model.denoiser.label} "
                                       f"tokenizers' tokens (they join words across a weight's edge); they are ignored")
        found = weighted_embeddings(model.pipeline, family, [(plain, 1.0)], plain, clip_skip)
    return found
