"""Hyper-parameters of latent consistency distillation into a LoRA (no torch import: the CLI builds its options
from this)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LcmTrainConfig:
    teacher: str = "huabu-tiny"  # the model distilled: a diffusers folder (huabu-tiny's by default)
    data: str = "data/scenes"  # captioned images (`huabu tiny data` makes huabu-tiny's)
    out: str = "runs/lcm"
    seed: int = 0
    steps: int = 1500
    batch_size: int = 16
    lr: float = 1e-4
    warmup: int = 100
    rank: int = 32
    alpha: float = 32.0
    ddim_steps: int = 50  # the teacher's solver grid: the student learns to jump one of its intervals
    guidance_min: float = 3.0  # the teacher's classifier-free guidance is drawn from this range per image
    guidance_max: float = 7.0
    huber_c: float = 0.001
    checkpoint_every: int = 100
    sample_every: int = 500
