"""Timestep draws and extra training noise shared by huabu's training loops (ControlNet, motion module).

Both answer one failure of a frozen base model: in the noisy steps where layout is decided it still reads an image's
overall colour, or a clip's object path, from the noisy latents themselves, so a new condition (a colour map, motion
words) is not needed in training and is ignored at sampling time, where those latents are random. Drawing more
noisy timesteps and hiding those cues under extra noise leaves the condition to carry them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from huabu.core.errors import InvalidRequest

TIMESTEP_SAMPLING = ("uniform", "cubic")


def check_timestep_sampling(sampling: str) -> None:
    if sampling not in TIMESTEP_SAMPLING:
        raise InvalidRequest(f"timesteps must be one of {', '.join(TIMESTEP_SAMPLING)}, got {sampling!r}")


def draw_timesteps(sampling: str, count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """`size` training timesteps in [0, count): uniform, or cubic as T2I-Adapter trains (biased to the noisy end)."""
    if sampling == "cubic":
        u = torch.rand(size, generator=generator)
        return ((1 - u ** 3) * count).long().clamp(max=count - 1)
    return torch.randint(0, count, (size,), generator=generator)


def lowfreq_noise(shape: tuple[int, ...], strength: float, generator: torch.Generator, grid: int = 4) -> torch.Tensor:
    """Smooth noise of std about `strength` for latents [..., h, w]: a `grid` x `grid` field of independent values per
    leading index (channel, frame), bilinearly upsampled. Kohya's multires noise has the same aim; one coarse level is
    enough to hide where a glyph-sized object sits in a small latent."""
    *lead, h, w = shape
    coarse = torch.randn(int(torch.tensor(lead).prod()), 1, grid, grid, generator=generator)
    smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return strength * smooth.reshape(shape)
