"""Hyper-parameters of motion-module training (no torch import: the CLI builds its options from this).

docs/training-notes.md says what each option was for and what it changed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "tiny" / "huabu-tiny"


@dataclass
class MotionTrainConfig:
    base: str = str(BUILTIN_DIR)  # SD-shaped diffusers folder: its UNet stays frozen, its VAE encodes the clips
    out: str = "runs/motion"
    seed: int = 0  # the moving-scene stream and the training order both derive from it
    clips: int = 4000  # moving-scene clips encoded once up front
    frames: int = 8  # frames per clip (docs/training-notes.md: why 8)
    steps: int = 3000
    batch_size: int = 4  # clips per step
    lr: float = 5e-4
    warmup: int = 100
    snr_gamma: float = 5.0  # min-SNR loss weighting; 0 turns it off
    heads: int = 4  # attention heads of each temporal transformer
    max_frames: int = 16  # the adapter's longest clip (its position table)
    checkpoint_every: int = 250
    sample_every: int = 1000
    sample_steps: int = 20
    init: str = ""  # a MotionAdapter folder to start from (e.g. a shipped module); empty = fresh, identity layers
    text_lora_rank: int = 0  # rank of a LoRA on the image model's cross-attention (attn2 to_k/to_v); 0 = none
    timesteps: str = "uniform"  # how training timesteps are drawn: "uniform", or "cubic" (most of them noisy)
    lowfreq_noise: float = 0.0  # std of smooth per-frame noise added in training (huabu.training.noise); 0 = none
    x0_floor: float = 0.0  # weigh the loss at least as an x0-prediction loss of this weight; 0 = off
    motion_words_heads: int = 0  # heads of the motion-word layers (huabu.engine.motion_words); 0 = none (or --init's)
    motion_tokens: str = ""  # words whose input embeddings train with the motion words ("up=top,down=bottom")
    motion_tokens_lr: float = 3e-4  # their learning rate
