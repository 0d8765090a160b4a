"""Hyper-parameters of textual inversion training (no torch import: the CLI and the studio build their options
from this)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EmbeddingTrainConfig:
    data: str = ""  # images with name.txt captions that name the token (or none: the token alone is the caption)
    token: str = ""  # the embedding's name: what prompts write, and its file name
    init_word: str = "*"  # the vectors start as this text's token vectors (repeated to fill --vectors)
    vectors: int = 1  # vectors per token
    model: str = "huabu-tiny"  # huabu-tiny or a diffusers folder of an SD 1.x/2.x-shaped model
    out: str = "runs/embedding"
    seed: int = 0
    steps: int = 500
    batch_size: int = 4
    lr: float = 0.005
    warmup: int = 0
    lr_schedule: str = "constant"  # or "cosine": from the peak down to 0.1 of it at --steps
    resolution: int = 0  # 0: the model's own size
    max_norm: float = 0.0  # each vector is scaled down to at most this L2 norm (0: no limit)
    object_weight: float = 0.0  # extra loss weight on pixels unlike the image's border colour (0: plain loss)
    background_prior: float = 0.0  # weight of keeping the background cells' prediction as with --init-word (0: off)
    timesteps: str = "uniform"  # or "cubic": biased to the noisy steps, where an object's shape is decided
    checkpoint_every: int = 100
    sample_every: int = 0  # also write NAME-STEP.safetensors and a sample image every so many steps; 0 = never
    sample_prompt: str = ""  # default: the first caption
