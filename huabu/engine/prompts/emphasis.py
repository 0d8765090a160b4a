"""A1111 emphasis, `(word:1.2)`, on the text stacks of SD3 and FLUX.

The pipeline encodes the plain text as it always does (`encode_prompt`); each token's row of the sequence
embeddings is then scaled by its weight and the section's mean restored, as A1111's "Original" emphasis does for
CLIP (huabu.engine.prompts.encode.apply_weights), once per text encoder's section: SD3's CLIP rows (CLIP-L and
CLIP-G side by side, one tokenization) and its T5 rows, FLUX's T5 rows. The pooled CLIP vectors stay unweighted,
as in A1111. The plain text is the fragments joined by spaces, and each fragment is tokenized alone, as A1111
does; should a tokenizer join words across a fragment's edge, the tokens would not line up, and then nothing is
weighted and the caller says so.
diffusers' pipelines have no weighting of their own, hence this module.
"""

from __future__ import annotations

from typing import Any

import torch

from huabu.engine.prompts.encode import apply_weights
from huabu.engine.prompts.syntax import BREAK

EMPHASIS_FAMILIES = ("sd3", "flux")


def token_weights(tokenizer: Any, fragments: list[tuple[str, float]], text: str) -> list[float] | None:
    """The weight of each token of `text` (special tokens left out), from the attention `fragments` it was made of;
    None when the fragments' tokens are not the text's own."""
    ids: list[int] = []
    weights: list[float] = []
    for fragment, weight in fragments:
        words = " ".join(fragment.split())
        if (fragment, weight) == BREAK or not words:
            continue
        piece = tokenizer(words, add_special_tokens=False).input_ids
        ids += piece
        weights += [weight] * len(piece)
    if tokenizer(text, add_special_tokens=False).input_ids != ids:
        return None
    return weights


def _row_weights(weights: list[float], length: int, leading: int) -> torch.Tensor:
    """Weights for `length` rows: `leading` special rows (CLIP's BOS), the tokens', then 1 for EOS and padding."""
    rows = [1.0] * leading + weights[:max(length - leading - 1, 0)]
    return torch.tensor(rows + [1.0] * (length - len(rows)))


def _weighted(embeds: torch.Tensor, start: int, stop: int, weights: torch.Tensor) -> torch.Tensor:
    section = apply_weights(embeds[:, start:stop], weights.to(embeds.device))
    return torch.cat([embeds[:, :start], section, embeds[:, stop:]], dim=1)


def weighted_embeddings(pipe: Any, family: str, fragments: list[tuple[str, float]], text: str,
                        clip_skip: int | None = None) -> dict[str, torch.Tensor] | None:
    """`prompt_embeds` and `pooled_prompt_embeds` (batch 1) of `text` with the fragments' weights applied, for an
    SD3 or FLUX pipeline; None when a weight cannot be placed on its tokens."""
    with torch.no_grad():
        if family == "sd3":
            embeds, _, pooled, _ = pipe.encode_prompt(prompt=text, prompt_2=None, prompt_3=None,
                                                      do_classifier_free_guidance=False, clip_skip=clip_skip)
            clip_rows = pipe.tokenizer_max_length
            sections = [(pipe.tokenizer, 0, clip_rows, 1)]
            if pipe.text_encoder_3 is not None:
                sections.append((pipe.tokenizer_3, clip_rows, embeds.shape[1], 0))
        elif family == "flux":
            embeds, pooled, _ = pipe.encode_prompt(prompt=text, prompt_2=None)
            sections = [(pipe.tokenizer_2, 0, embeds.shape[1], 0)]
        else:
            raise ValueError(f"no emphasis for family {family!r}")
    for tokenizer, start, stop, leading in sections:
        weights = token_weights(tokenizer, fragments, text)
        if weights is None:
            return None
        embeds = _weighted(embeds, start, stop, _row_weights(weights, stop - start, leading))
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
