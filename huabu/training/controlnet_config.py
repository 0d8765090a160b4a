"""Hyper-parameters of ControlNet training (huabu.training.controlnet), kept free of torch so the CLI builds its options
from them cheaply."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ControlNetTrainConfig:
    type: str = "canny"  # the preprocessor (huabu.engine.control) that makes each image's control map, on the fly
    base: str = "huabu-tiny"  # the frozen base model: a name, a diffusers folder or a single file
    data: str = "data/scenes"  # a scene dataset folder (`huabu tiny data`)
    out: str = ""  # run folder; empty = runs/controlnet-<type>
    latents: str = ""  # optional cached VAE latents of the same dataset and VAE (e.g. runs/unet/latents.npy)
    seed: int = 0
    steps: int = 4000
    batch_size: int = 32
    lr: float = 1e-4
    warmup: int = 100
    caption_dropout: float = 0.5  # the ControlNet paper drops half the prompts so the control alone must carry
    snr_gamma: float = 0.0  # min-SNR loss weighting; 0 = plain MSE
    # how training timesteps are drawn: "uniform", or "cubic" (T2I-Adapter's t = (1 - u**3) * T, most of them noisy):
    # global layout and colour are settled in the noisy steps, where uniform draws teach a colour map too slowly
    timesteps: str = "uniform"
    # kohya's --noise_offset: each image's noise gets a per-channel constant of this std. The frozen base model reads
    # an image's overall colour from the mean of its noisy latents, which at sampling time is random; with the offset
    # that mean is unreliable in training too, so the ControlNet must learn to set the colour from its map.
    noise_offset: float = 0.0
    # ControlNet conditioning_embedding_out_channels; its length sets how far the control image is shrunk
    # (2 ** (len - 1)) and must match the VAE factor. Empty = chosen by the VAE factor ((16, 32, 64) for f=4).
    embedding_channels: tuple[int, ...] = ()
    checkpoint_every: int = 250
    sample_every: int = 500
    samples: int = 8  # (control, output) pairs in each sample grid
    sample_steps: int = 20
    sample_cfg: float = 5.0

    @property
    def out_dir(self) -> str:
        return self.out or f"runs/controlnet-{self.type}"
