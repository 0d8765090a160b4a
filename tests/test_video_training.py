"""Motion-module training on toy sizes: only the motion layers learn and the loss falls; a run killed after a
checkpoint resumes to the same weights; the result loads as a motion module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from huabu.video import scenes as V
from huabu.video.configs import MotionTrainConfig
from training_support import Killed, kill_after, newest_weights


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    from conftest import build_tiny_pipeline

    folder = tmp_path_factory.mktemp("motion-base") / "tiny-sd"
    build_tiny_pipeline().save_pretrained(folder)
    return folder


def clips(index: int) -> tuple[np.ndarray, str]:
    scene = V.training_moving_scene(5, index, frames=4)
    return V.render_moving(scene), scene.caption


def _cfg(base: Path, out: Path, **changes) -> MotionTrainConfig:
    fields = dict(base=str(base), out=str(out), clips=6, frames=4, steps=4, batch_size=2, warmup=1, heads=2,
                  max_frames=8, checkpoint_every=2, sample_every=10**6, sample_steps=2)
    return MotionTrainConfig(**{**fields, **changes})


def test_only_motion_layers_learn_and_loss_falls(base):
    from diffusers import UNet2DConditionModel

    from huabu.tiny.train_unet import noise_scheduler
    from huabu.video.train_motion import build_motion_adapter, motion_loss, motion_modules, motion_unet

    unet2d = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    torch.manual_seed(0)
    unet = motion_unet(unet2d, build_motion_adapter(unet2d, heads=2, max_frames=8))
    trained = motion_modules(unet)
    trainable = {id(p) for p in unet.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in trained.parameters()} and trainable
    frozen = {k: v.clone() for k, v in unet.state_dict().items() if "motion_modules" not in k}
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 4, 4, 8, 8, generator=gen)  # [clips, channels, frames, h, w]
    noise = torch.randn(x0.shape, generator=gen)
    cond = torch.randn(2, 77, 32, generator=gen)
    t = torch.tensor([300, 700])
    opt = torch.optim.AdamW(trained.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = motion_loss(unet, noise_scheduler(), x0, cond, noise, t, snr_gamma=5.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.95 * losses[0], losses
    for key, value in unet.state_dict().items():
        if key in frozen:
            assert torch.equal(value, frozen[key]), key


def test_fresh_adapter_leaves_the_image_model_unchanged(base):
    from diffusers import UNet2DConditionModel

    from huabu.video.train_motion import build_motion_adapter, motion_unet

    unet2d = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    unet = motion_unet(unet2d, build_motion_adapter(unet2d, heads=2, max_frames=8))
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 3, 8, 8, generator=gen)
    cond = torch.randn(1, 77, 32, generator=gen)
    with torch.no_grad():
        video = unet(x, 500, encoder_hidden_states=cond.repeat_interleave(3, dim=0)).sample
        stills = unet2d(x[0].permute(1, 0, 2, 3), 500, encoder_hidden_states=cond.expand(3, -1, -1)).sample
    assert torch.allclose(video[0].permute(1, 0, 2, 3), stills, atol=1e-5)


def test_motion_training_resumes_exactly_and_makes_a_motion_module(base, tmp_path, monkeypatch, settings, engine):
    from huabu.video import train_motion

    monkeypatch.setattr(train_motion, "sample_prompts", lambda: ["a rocket moving up on a black background"])
    straight = train_motion.train_motion(_cfg(base, tmp_path / "straight", sample_every=4), data=clips)
    killed = tmp_path / "killed"
    with monkeypatch.context() as m:
        kill_after(train_motion, m, 2)
        with pytest.raises(Killed):
            train_motion.train_motion(_cfg(base, killed), data=clips)
    assert [p.name for p in (killed / "checkpoints").glob("step-*")] == ["step-0000002"]
    train_motion.train_motion(_cfg(base, killed), data=clips)
    a, b = newest_weights(tmp_path / "straight", "motion"), newest_weights(killed, "motion")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.endswith("proj_out.weight") and a[k].abs().max() > 0 for k in a)  # it learned something

    from PIL import Image

    with Image.open(tmp_path / "straight" / "samples-0000004.gif") as gif:
        assert gif.n_frames == 4 and gif.size == (32, 32)  # the base model's default size
    # The result is a MotionAdapter folder that `huabu video --motion-module` runs.
    from huabu.engine.generate import Engine
    from huabu.requests import VideoRequest

    result = Engine(settings, engine.models).generate_video(VideoRequest.create(
        prompt="a rocket moving up", model="tiny-sd", motion_module=str(straight), frames=4, width=32, height=32,
        steps=2, seed=1))
    assert len(result.frames) == 4 and "Motion module: final" in result.infotext


def test_clips_must_have_the_configured_frames(base, tmp_path):
    from huabu.errors import HuabuError
    from huabu.video.train_motion import train_motion

    with pytest.raises(HuabuError, match=r"uint8 \[3, H, W, 3\]"):
        train_motion(_cfg(base, tmp_path / "bad", frames=3), data=clips)
