"""What a denoiser stage (UNet or DiT) trains, and the recipe the training loop runs it by: the denoiser alone under a
frozen text encoder, or the two together (`--text-lr`), on English, Chinese or mixed captions (`--captions`), with
EMA copies for sampling.

CLIP's byte-level BPE cuts a Chinese character into two or three byte pieces shared by thousands of characters, so
before a bilingual run each character of the training captions gets a token of its own, as Chinese-CLIP's character
vocabulary has.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from transformers import CLIPTextModel, CLIPTokenizer

from huabu.core.errors import InvalidRequest
from huabu.training.captioned_arrays import CaptionedArrays
from huabu.training.loop import Recipe, Sampled


@dataclass
class Trainables:
    """A stage's models. `denoiser` and `text_encoder` are what the loss runs; `ema` and `ema_text` what samples
    and the final folder use (`ema_text` is the frozen encoder itself when it does not train); `trained` is what
    the optimizer steps and `ema_all` follows; `checkpointed` names the parts a checkpoint holds."""

    denoiser: torch.nn.Module
    text_encoder: CLIPTextModel
    ema: torch.nn.Module
    ema_text: CLIPTextModel
    opt: torch.optim.Optimizer
    trained: torch.nn.Module
    ema_all: torch.nn.Module
    checkpointed: dict[str, torch.nn.Module]

    def recipe(self, accelerator: Accelerator, step_loss: Callable[[int], torch.Tensor], ema_decay: float,
               sample: Callable[[int], Sampled]) -> Recipe:
        """The training loop's recipe: the optimizer steps what trains, and the EMA copies follow after each step."""
        return Recipe(accelerator, self.opt, self.checkpointed, step_loss, list(self.trained.parameters()),
                      after_step=lambda step: update_ema(self.ema_all, self.trained, step, ema_decay), sample=sample)


def check_captions(captions: str, text_lr: float) -> None:
    if captions not in ("en", "zh", "mix"):
        raise InvalidRequest(f"--captions must be en, zh or mix, got {captions!r}")
    if captions != "en" and text_lr <= 0:
        raise InvalidRequest(f"--captions {captions} needs a text encoder that learns Chinese: give --text-lr")


def stage_captions(data: CaptionedArrays, captions: str, seed: int, step: int) -> list[str]:
    """Every image's caption for `step`: English, Chinese, or either drawn anew each step ("mix")."""
    return data.captions if captions == "en" else data.captions_in(captions, seed=seed * 7919 + step)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, step: int, max_decay: float) -> None:
    # Warm-up decay as diffusers' EMAModel uses, so early EMA weights are not stuck near the random init.
    decay = min(max_decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)


@torch.no_grad()
def prepared_with_ema(accelerator: Accelerator, model: torch.nn.Module, groups: list[dict]
                      ) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.nn.Module]:
    """The model and its AdamW over `groups` (torch param groups, each with its "lr") prepared by `accelerator`,
    and its frozen EMA copy on the same device."""
    ema = copy.deepcopy(model).requires_grad_(False).to(accelerator.device)
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    prepared, opt = accelerator.prepare(model, opt)
    return prepared, opt, ema


def trainables(accelerator: Accelerator, name: str, denoiser: torch.nn.Module, text_encoder: CLIPTextModel,
               tok: CLIPTokenizer, lr: float, text_lr: float, chinese_captions: list[str]) -> Trainables:
    """The denoiser (checkpointed as `name`) at `lr`, and with `text_lr` > 0 the text encoder beside it at that
    rate, its tokenizer first given a token per character of `chinese_captions` (pass [] for English runs)."""
    text_encoder.to(accelerator.device)
    if text_lr <= 0:
        prepared, opt, ema = prepared_with_ema(accelerator, denoiser, [{"params": denoiser.parameters(), "lr": lr}])
        return Trainables(prepared, text_encoder, ema, text_encoder, opt, denoiser, ema,
                          {name: denoiser, "ema": ema})
    if accelerator.num_processes > 1:
        raise InvalidRequest("--text-lr trains on one process only: leave it out or run without accelerate")
    with_chinese_characters(tok, text_encoder, chinese_captions)
    both = torch.nn.ModuleDict({name: denoiser, "text_encoder": text_encoder.requires_grad_(True).train()})
    groups = [{"params": denoiser.parameters(), "lr": lr}, {"params": text_encoder.parameters(), "lr": text_lr}]
    _, opt, ema_both = prepared_with_ema(accelerator, both, groups)
    return Trainables(denoiser, text_encoder, ema_both[name], ema_both["text_encoder"], opt, both, ema_both,
                      {name: denoiser, "text_encoder": text_encoder, "ema": ema_both})


def with_chinese_characters(tok: CLIPTokenizer, text_encoder: CLIPTextModel, captions: list[str]) -> int:
    """Give each non-ASCII character of `captions` a token of its own, its embedding starting at the mean of the
    byte pieces BPE cut it into; returns how many tokens were added."""
    chars = sorted({c for caption in captions for c in caption if not c.isascii()})
    pieces = [tok(c, add_special_tokens=False).input_ids for c in chars]
    added = tok.add_tokens(chars)
    if not added:
        return 0
    text_encoder.resize_token_embeddings(len(tok), mean_resizing=False)
    table = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for char, ids in zip(chars, pieces):
            table[tok.convert_tokens_to_ids(char)] = table[ids].mean(0)
    return added
