"""Weighted, chunked prompt embeddings as A1111 webui 1.10 makes them ("Original" emphasis), for diffusers.

A prompt is split into weighted fragments (syntax.parse_attention), tokenized, and cut into chunks of 75
tokens (77 with BOS/EOS) that the CLIP text model encodes one by one; the chunks' hidden states are scaled by
per-token weights, rescaled to their unweighted mean, and concatenated along the sequence axis. diffusers
truncates at 77 tokens and has no weighting, so this is hand-written (after A1111's sd_hijack_clip).

A1111 differs in two details: it restores the mean over every text encoded in one batch (so a prompt-editing
variant depended on its siblings), where each text here is normalized alone and can be cached; and textual
inversion embeddings arrive as tokens already added to the tokenizer (huabu.engine.embeddings rewrites their names).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from huabu.core.errors import InvalidRequest
from huabu.engine.prompts.syntax import BREAK, parse_attention, prompt_schedule, schedule_index

CHUNK_TOKENS = 75  # tokens of text per chunk; BOS and EOS make it CLIP's 77
COMMA_BACKTRACK = 20  # A1111's comma_padding_backtrack default: how far back a chunk may end at a comma


@dataclass
class Conditioning:
    """Text conditioning: `embeds` [batch, 77*k, D]; `pooled` [batch, D2] for SDXL, else None."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None


def chunk_tokens(
    fragments: list[tuple[list[int] | None, float]], comma_id: int | None
) -> list[tuple[list[int], list[float]]]:
    """Cut weighted token runs into chunks of at most CHUNK_TOKENS tokens, as A1111 does.

    `fragments` holds (token ids, weight) per attention fragment, with None ids for BREAK, which closes the
    current chunk. When a chunk fills up and its last comma is within COMMA_BACKTRACK tokens of the end, the
    tokens after that comma move to the next chunk so a phrase is not cut in two. Always at least one chunk.
    """
    chunks: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal ids, weights, last_comma
        chunks.append((ids, weights))
        ids, weights, last_comma = [], [], -1

    for tokens, weight in fragments:
        if tokens is None:
            close()
            continue
        for token in tokens:
            if token == comma_id:
                last_comma = len(ids)
            elif len(ids) == CHUNK_TOKENS and last_comma != -1 and CHUNK_TOKENS - last_comma <= COMMA_BACKTRACK:
                cut = last_comma + 1
                moved_ids, moved_weights = ids[cut:], weights[cut:]
                ids, weights = ids[:cut], weights[:cut]
                close()
                ids, weights = moved_ids, moved_weights
            if len(ids) == CHUNK_TOKENS:
                close()
            ids.append(token)
            weights.append(weight)
    if ids or not chunks:
        close()
    return chunks


def _final_layer_norm(text_encoder: torch.nn.Module) -> torch.nn.Module:
    # transformers 5 keeps it on CLIPTextModel itself; 4.x and the projection model keep it on .text_model.
    norm = getattr(text_encoder, "final_layer_norm", None)
    return norm if norm is not None else text_encoder.text_model.final_layer_norm


class PromptEncoder:
    """Encodes A1111 prompts with one (SD 1.x/2.x) or two (SDXL) tokenizer/text-encoder pairs.

    With one encoder, `clip_skip` n takes hidden_states[-n] through the final layer norm (1 = last layer).
    With two (SDXL), each encoder's penultimate hidden states are used and concatenated on the feature axis,
    and `clip_skip` is ignored, as in A1111 by default; the pooled output is the last encoder's `text_embeds`
    for the first chunk.
    """

    def __init__(self, tokenizers: list, text_encoders: list, clip_skip: int = 1) -> None:
        if not tokenizers or len(tokenizers) != len(text_encoders):
            raise ValueError("PromptEncoder needs one tokenizer per text encoder")
        if clip_skip < 1:
            raise InvalidRequest(f"clip skip must be 1 or more, got {clip_skip}")
        if len(text_encoders) == 1:
            layers = text_encoders[0].config.num_hidden_layers
            if clip_skip > layers:
                raise InvalidRequest(f"clip skip {clip_skip} is more than the text encoder's {layers} layers")
        self.tokenizers = list(tokenizers)
        self.text_encoders = list(text_encoders)
        self.clip_skip = clip_skip
        self._comma_ids = [tokenizer.get_vocab().get(",</w>") for tokenizer in self.tokenizers]

    @property
    def is_sdxl(self) -> bool:
        return len(self.text_encoders) > 1

    def encode(self, text: str) -> Conditioning:
        """Weighted, chunked embeddings of one prompt (no scheduling): embeds [1, 77*k, D], pooled or None."""
        fragments = parse_attention(text)
        per_encoder = [self._encode_chunks(i, fragments) for i in range(len(self.text_encoders))]
        count = max(embeds.shape[0] for embeds, _ in per_encoder)
        parts = []
        for i, (embeds, _) in enumerate(per_encoder):
            if embeds.shape[0] < count:  # tokenizers that split differently: pad with empty chunks
                empty = self._encode_chunks(i, [("", 1.0)])[0]
                embeds = torch.cat([embeds, empty.expand(count - embeds.shape[0], -1, -1)])
            parts.append(embeds.to(parts[0].device) if parts else embeds)
        embeds = torch.cat(parts, dim=-1).reshape(1, count * (CHUNK_TOKENS + 2), -1)
        return Conditioning(embeds=embeds, pooled=per_encoder[-1][1])

    def _encode_chunks(
        self, index: int, fragments: list[tuple[str, float]]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[chunks, 77, D] weighted hidden states of one encoder, and its pooled output for the first chunk."""
        tokenizer, text_encoder = self.tokenizers[index], self.text_encoders[index]
        texts = [fragment for fragment, weight in fragments if (fragment, weight) != BREAK]
        tokenized = (
            tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"] if texts else []
        )
        token_runs = iter(tokenized)
        runs = [
            (None, weight) if (fragment, weight) == BREAK else (next(token_runs), weight)
            for fragment, weight in fragments
        ]
        chunks = chunk_tokens(runs, self._comma_ids[index])

        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        ids = [[bos, *tokens, eos] + [pad] * (CHUNK_TOKENS - len(tokens)) for tokens, _ in chunks]
        weights = [[1.0, *w] + [1.0] * (CHUNK_TOKENS + 1 - len(w)) for _, w in chunks]

        device = next(text_encoder.parameters()).device
        with torch.no_grad():
            output = text_encoder(input_ids=torch.tensor(ids, device=device), output_hidden_states=True)
            if self.is_sdxl:
                hidden = output.hidden_states[-2]
            elif self.clip_skip == 1:
                hidden = output.last_hidden_state
            else:
                hidden = _final_layer_norm(text_encoder)(output.hidden_states[-self.clip_skip])
            hidden = apply_weights(hidden, torch.tensor(weights, device=hidden.device))
        pooled = getattr(output, "text_embeds", None)
        return hidden, (pooled[:1] if pooled is not None else None)


def apply_weights(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Scale each token's hidden state by its weight, then restore each chunk's mean (A1111 "Original")."""
    if bool((weights == 1.0).all()):
        return hidden
    z = hidden.float()
    mean_before = z.mean(dim=(1, 2), keepdim=True)
    z = z * weights[..., None]
    mean_after = z.mean(dim=(1, 2), keepdim=True)
    z = z * torch.where(mean_after == 0, 1.0, mean_before / mean_after)
    return z.to(hidden.dtype)


def _pad_to(conditioning: Conditioning, length: int, empty: Conditioning) -> Conditioning:
    """Append encoded empty-prompt chunks until the sequence is `length` tokens (A1111 pad_cond_uncond)."""
    missing = (length - conditioning.embeds.shape[1]) // empty.embeds.shape[1]
    if missing == 0:
        return conditioning
    embeds = torch.cat([conditioning.embeds, empty.embeds.repeat(1, missing, 1)], dim=1)
    return Conditioning(embeds=embeds, pooled=conditioning.pooled)


def _batched(conditioning: Conditioning, batch_size: int) -> Conditioning:
    pooled = conditioning.pooled.repeat(batch_size, 1) if conditioning.pooled is not None else None
    return Conditioning(embeds=conditioning.embeds.repeat(batch_size, 1, 1), pooled=pooled)


@dataclass
class ScheduledConditioning:
    """Per-step conditioning for one generation: positive + negative schedules, batch size, CFG on/off.

    Step numbers are 0-based sampling steps. Every entry has the same sequence length (shorter ones padded
    with encoded empty chunks), so positive and negative can be stacked for classifier-free guidance; whether
    guidance is on is read from the batch of the pipeline's own prompt_embeds. Call the pipeline with
    num_images_per_prompt=1 (the embeddings already carry the batch) and pass `callback_tensor_inputs` as
    its callback_on_step_end_tensor_inputs.
    """

    positive: list[tuple[int, Conditioning]]  # (end_step, conditioning with batch 1), see syntax.schedule_index
    negative: list[tuple[int, Conditioning]]
    batch_size: int
    _swaps: dict = field(default_factory=dict, init=False, repr=False)  # built guidance tensors, by entries

    @classmethod
    def build(
        cls, encoder: PromptEncoder, prompt: str, negative_prompt: str, steps: int, batch_size: int
    ) -> ScheduledConditioning:
        """Schedule and encode both prompts (each distinct text once). LoRA tags must already be stripped."""
        if batch_size < 1:
            raise InvalidRequest(f"batch size must be at least 1, got {batch_size}")
        encoded: dict[str, Conditioning] = {}

        def encode(text: str) -> Conditioning:
            if text not in encoded:
                encoded[text] = encoder.encode(text)
            return encoded[text]

        positive = [(end, encode(text)) for end, text in prompt_schedule(prompt, steps)]
        negative = [(end, encode(text)) for end, text in prompt_schedule(negative_prompt, steps)]
        length = max(c.embeds.shape[1] for _, c in positive + negative)
        empty = encode("")
        positive = [(end, _pad_to(c, length, empty)) for end, c in positive]
        negative = [(end, _pad_to(c, length, empty)) for end, c in negative]
        return cls(positive=positive, negative=negative, batch_size=batch_size)

    @property
    def is_sdxl(self) -> bool:
        return self.positive[0][1].pooled is not None

    @property
    def callback_tensor_inputs(self) -> list[str]:
        """What to pass as the pipeline's `callback_on_step_end_tensor_inputs` for step_callback to work."""
        return ["prompt_embeds", "add_text_embeds"] if self.is_sdxl else ["prompt_embeds"]

    def _indices(self, step: int) -> tuple[int, int]:
        return (
            schedule_index([end for end, _ in self.positive], step),
            schedule_index([end for end, _ in self.negative], step),
        )

    def at_step(self, step: int) -> tuple[Conditioning, Conditioning]:
        """(positive, negative) for 0-based sampling step `step`, both [batch, L, D] with equal L."""
        pos, neg = self._indices(step)
        return _batched(self.positive[pos][1], self.batch_size), _batched(self.negative[neg][1], self.batch_size)

    def initial_kwargs(self) -> dict:
        """Embedding kwargs for a diffusers SD/SDXL pipeline call (the conditioning of step 0)."""
        positive, negative = self.at_step(0)
        kwargs = {"prompt_embeds": positive.embeds, "negative_prompt_embeds": negative.embeds}
        if positive.pooled is not None:
            kwargs["pooled_prompt_embeds"] = positive.pooled
            kwargs["negative_pooled_prompt_embeds"] = negative.pooled
        return kwargs

    def step_callback(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        """diffusers `callback_on_step_end`: swap in the next step's embeddings when the schedule changes.

        Under CFG diffusers holds torch.cat([negative, positive]) in "prompt_embeds" (and the pooled pair in
        "add_text_embeds" for SDXL); without CFG just the positive. Nothing is built when nothing changes.
        """
        following = self._indices(step + 1)
        if following == self._indices(step):
            return callback_kwargs
        current = callback_kwargs.get("prompt_embeds")
        if current is None:
            raise ValueError("step_callback needs callback_on_step_end_tensor_inputs to include 'prompt_embeds'")
        if current.shape[0] not in (self.batch_size, 2 * self.batch_size):
            raise ValueError(
                f"prompt_embeds has batch {current.shape[0]}, expected {self.batch_size} or {2 * self.batch_size}; "
                "call the pipeline with num_images_per_prompt=1"
            )
        guided = current.shape[0] == 2 * self.batch_size
        key = (following, guided, current.dtype, current.device)
        if key not in self._swaps:
            positive = _batched(self.positive[following[0]][1], self.batch_size)
            negative = _batched(self.negative[following[1]][1], self.batch_size)
            embeds, pooled = positive.embeds, positive.pooled
            if guided:
                embeds = torch.cat([negative.embeds, embeds])
                pooled = torch.cat([negative.pooled, pooled]) if pooled is not None else None
            pooled = pooled.to(device=current.device, dtype=current.dtype) if pooled is not None else None
            self._swaps[key] = (embeds.to(device=current.device, dtype=current.dtype), pooled)
        embeds, pooled = self._swaps[key]
        callback_kwargs["prompt_embeds"] = embeds
        if pooled is not None:
            if "add_text_embeds" not in callback_kwargs:
                raise ValueError("step_callback needs callback_on_step_end_tensor_inputs to include 'add_text_embeds'")
            callback_kwargs["add_text_embeds"] = pooled.to(callback_kwargs["add_text_embeds"].dtype)
        return callback_kwargs
