"""Hyper-parameters of ControlNet training (huabu.training.controlnet), kept free of torch so the CLI builds its options
from them cheaply. docs/training-notes.md says what the noise options were for."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ControlNetTrainConfig:
    type: str = "canny"  # the preprocessor (huabu.engine.control) that makes each image's control map, on the fly
    base: str = "huabu-tiny"  # the frozen base model: a name, a diffusers folder or a single file
    data: str = "data/scenes"  # a scene dataset folder (`huabu tiny data`)
    out: str = ""  # run folder; empty = runs/controlnet-<type>
    latents: str = ""  # optional cached VAE latents of the same dataset and VAE (e.g. runs/unet/latents.npy)
    init: str = ""  # a ControlNet folder to start from (fine-tuning); empty = a copy of the base UNet's encoder
    seed: int = 0
    steps: int = 4000
    batch_size: int = 32
    lr: float = 1e-4
    warmup: int = 100
    caption_dropout: float = 0.5  # the ControlNet paper drops half the prompts so the control alone must carry
    snr_gamma: float = 0.0  # min-SNR loss weighting; 0 = plain MSE
    timesteps: str = "uniform"  # how training timesteps are drawn: "uniform", or "cubic" (most of them noisy)
    noise_offset: float = 0.0  # std of a per-channel constant added to each image's noise (kohya's --noise_offset)
    embedding_channels: tuple[int, ...] = ()  # the control embedding's channels; empty = by the VAE factor
    checkpoint_every: int = 250
    sample_every: int = 500
    samples: int = 8  # (control, output) pairs in each sample grid
    sample_steps: int = 20
    sample_cfg: float = 5.0

    @property
    def out_dir(self) -> str:
        return self.out or f"runs/controlnet-{self.type}"
