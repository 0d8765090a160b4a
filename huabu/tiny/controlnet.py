"""`huabu tiny train controlnet`: huabu.training.controlnet on huabu-tiny, reusing the UNet stage's latent cache.

The UNet stage caches the scaled VAE latents of the dataset's first N scenes (runs/unet/latents.npy, N x 4 x 16 x 16,
float16, in dataset order), which is exactly what ControlNet training needs for those scenes: the run trains on the
first N scenes, so every latent row stays paired with its image (the control map is made from the image) and caption.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from huabu.core.errors import InvalidRequest
from huabu.core.text_boxes import GLYPH
from huabu.tiny.data import load_dataset
from huabu.tiny.demo_configs import TEXT_DATA, TinyControlNetConfig
from huabu.training.controlnet import train_controlnet

# Latent rows that must match a fresh encoding by the base model's VAE (relative error), so that a cache made by
# another VAE is refused instead of silently teaching the ControlNet wrong latents. fp16 storage alone is ~1e-3.
_CHECKED_ROWS = 4
_LATENT_TOLERANCE = 0.02


def _vae_of(base: str, settings=None):
    from diffusers import AutoencoderKL

    from huabu.core.settings import Settings
    from huabu.engine.models import ModelManager

    ref = ModelManager(settings or Settings.from_env()).resolve(base)
    if ref.path is None or not (ref.path / "vae").is_dir():
        return None  # a single file or hub model: nothing cheap to check against
    return AutoencoderKL.from_pretrained(ref.path, subfolder="vae", dtype=torch.float32).eval()


@torch.no_grad()
def check_latents(latents: np.ndarray, images: np.ndarray, vae, path: str) -> None:
    """Refuse a latent cache whose first rows are not what `vae` makes of the first images."""
    pixels = torch.from_numpy(np.array(images[:_CHECKED_ROWS])).permute(0, 3, 1, 2).float() / 127.5 - 1
    fresh = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor
    cached = torch.from_numpy(np.array(latents[:_CHECKED_ROWS], dtype=np.float32))
    if cached.shape != fresh.shape:
        raise InvalidRequest(f"{path} holds latents of shape {tuple(cached.shape[1:])}, the base model's VAE makes "
                             f"{tuple(fresh.shape[1:])}; pass --latents '' to encode the dataset anew")
    error = float((cached - fresh).norm() / fresh.norm().clamp(min=1e-8))
    if error > _LATENT_TOLERANCE:
        raise InvalidRequest(f"{path} was not made by the base model's VAE from this dataset (relative error "
                             f"{error:.3f}); pass the matching --latents, or --latents '' to encode anew")


def for_type(cfg: TinyControlNetConfig) -> TinyControlNetConfig:
    """The preset for the glyph type: the text scenes (`huabu tiny data --text`), and no UNet-stage latent cache,
    which holds the 64 x 64 object scenes' latents, not the 128 x 128 text scenes'."""
    if cfg.type != GLYPH:
        return cfg
    defaults = TinyControlNetConfig()
    return replace(cfg, data=TEXT_DATA if cfg.data == defaults.data else cfg.data,
                   latents="" if cfg.latents == defaults.latents else cfg.latents)


def train(cfg: TinyControlNetConfig, settings=None, cancel: Callable[[], bool] | None = None) -> Path:
    """Train (or resume) a huabu-tiny ControlNet; returns its final diffusers folder."""
    cfg = for_type(cfg)
    data = load_dataset(Path(cfg.data))
    if cfg.latents:
        if not Path(cfg.latents).is_file():
            raise InvalidRequest(f"latent cache {cfg.latents} not found: train the UNet stage first (it writes it), "
                                 f"or pass --latents '' to encode the dataset here (slow)")
        latents = np.load(cfg.latents, mmap_mode="r")
        count = latents.shape[0]
        if count > len(data):
            raise InvalidRequest(f"{cfg.latents} holds {count} latents but {cfg.data} only {len(data)} scenes")
        vae = _vae_of(cfg.base, settings)
        if vae is not None:
            check_latents(latents, data.images, vae, cfg.latents)
        data = SimpleNamespace(images=data.images[:count], captions=data.captions[:count], attrs=data.attrs[:count])
    return train_controlnet(cfg, data=data, settings=settings, cancel=cancel)
