"""Timestep draws and extra training noise (huabu.training.noise) and how motion-module training uses them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from huabu.core.errors import InvalidRequest
from huabu.training.motion_config import MotionTrainConfig
from huabu.training.noise import check_timestep_sampling, draw_timesteps, lowfreq_noise


def test_cubic_timesteps_favour_the_noisy_end():
    uniform = draw_timesteps("uniform", 1000, 20000, torch.Generator().manual_seed(0))
    cubic = draw_timesteps("cubic", 1000, 20000, torch.Generator().manual_seed(0))
    assert 0 <= int(cubic.min()) and int(cubic.max()) <= 999 and cubic.dtype == torch.int64
    assert abs(float(uniform.float().mean()) - 499.5) < 10
    assert abs(float(cubic.float().mean()) - 750) < 10  # E[1 - u^3] = 3/4
    assert abs(float((cubic >= 500).float().mean()) - 0.5 ** (1 / 3)) < 0.02  # P(u <= cbrt(1/2)): 79%, not 50%
    with pytest.raises(InvalidRequest, match="timesteps must be one of uniform, cubic, got 'logit'"):
        check_timestep_sampling("logit")


def test_lowfreq_noise_is_smooth_within_a_frame_and_independent_across_frames():
    noise = lowfreq_noise((64, 4, 8, 16, 16), 0.5, torch.Generator().manual_seed(0))
    again = lowfreq_noise((64, 4, 8, 16, 16), 0.5, torch.Generator().manual_seed(0))
    assert noise.shape == (64, 4, 8, 16, 16) and torch.equal(noise, again)
    assert 0.3 < float(noise.std()) < 0.5  # bilinear upsampling of std-0.5 values smooths a little
    neighbours = np.corrcoef(noise[..., :-1].flatten().numpy(), noise[..., 1:].flatten().numpy())[0, 1]
    frames = np.corrcoef(noise[:, :, :-1].flatten().numpy(), noise[:, :, 1:].flatten().numpy())[0, 1]
    assert neighbours > 0.9 and abs(frames) < 0.05
    # It moves whole regions of a frame, as an object does: 4x4 block means vary far more than white noise's.
    def block_means(x):
        return x.reshape(64, 4, 8, 4, 4, 4, 4).mean(dim=(4, 6))

    white = torch.randn(noise.shape, generator=torch.Generator().manual_seed(1)) * noise.std()
    assert float(block_means(noise).std()) > 3 * float(block_means(white).std())


def test_motion_batches_use_the_configured_timesteps_and_noise():
    from huabu.training.motion import clip_batch

    latents = np.zeros((10, 8, 4, 16, 16), np.float16)
    captions = [f"clip {i}" for i in range(10)]

    def batches(**changes):
        cfg = MotionTrainConfig(batch_size=4, **changes)
        return [clip_batch(cfg, latents, captions, step, 1000) for step in range(40)]

    plain, noisy = batches(), batches(timesteps="cubic", lowfreq_noise=1.0)
    assert [b[0] for b in plain] == [b[0] for b in noisy]  # the same clips and captions, step by step
    assert plain[0][1].shape == (4, 4, 8, 16, 16)  # [clips, channels, frames, h, w]
    mean_t = {name: float(torch.cat([b[3] for b in runs]).float().mean()) for name, runs in
              (("plain", plain), ("noisy", noisy))}
    assert mean_t["plain"] < 600 < mean_t["noisy"]

    def frame_means(runs):  # each frame's mean noise: where a smooth field shifts the whole frame
        return torch.cat([b[2].mean(dim=(3, 4)).flatten() for b in runs])

    assert float(frame_means(plain).std()) < 0.1 < float(frame_means(noisy).std())
