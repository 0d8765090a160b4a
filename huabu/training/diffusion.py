"""SD 1.x training pieces the recipes share: the DDPM noise schedule, prompt conditioning, pixel scaling and the
object masks that weight a loss towards an object on a plain background."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDPMScheduler
from transformers import CLIPTextModel, CLIPTokenizer

CAPTION_DROPOUT = 0.1  # SD 1.x's share of empty captions in training, for classifier-free guidance


def noise_scheduler() -> DDPMScheduler:
    """SD 1.x's training schedule."""
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type="epsilon", clip_sample=False, steps_offset=1)


def encode_text(tok: CLIPTokenizer, text_encoder: CLIPTextModel, captions: list[str]) -> torch.Tensor:
    """The conditioning SD pipelines compute: last hidden state of 77-token, EOS-padded prompts. Call it under
    torch.no_grad() unless something in the encoder learns (motion training's word rows)."""
    ids = tok(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 images N x H x W x 3 -> float N x 3 x H x W in [-1, 1], as SD's VAE reads them."""
    return torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def object_masks(images: np.ndarray, latent_size: int, threshold: int = 24) -> torch.Tensor:
    """N x 1 x S x S: 1 where a latent cell covers pixels that differ from the image's border colour (the object
    of an image on a plain background), else 0."""
    border = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], axis=1)
    colour = np.median(border, axis=1)[:, None, None, :]
    differs = (np.abs(images.astype(np.int16) - colour).max(axis=-1) > threshold).astype(np.float32)
    return torch.nn.functional.adaptive_max_pool2d(torch.from_numpy(differs)[:, None], latent_size)
