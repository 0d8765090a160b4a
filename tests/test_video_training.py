"""Motion-module training on toy sizes: only the motion layers learn and the loss falls; a run killed after a
checkpoint resumes to the same weights; the result loads as a motion module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from training_support import Killed, kill_after, newest_weights

from huabu.tiny import video_scenes as V
from huabu.training.motion_config import MotionTrainConfig


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    from conftest import build_tiny_pipeline

    folder = tmp_path_factory.mktemp("motion-base") / "tiny-sd"
    build_tiny_pipeline().save_pretrained(folder)
    return folder


PROMPTS = ["a rocket moving up on a black background"]  # in sample GIFs


def clips(index: int) -> tuple[np.ndarray, str]:
    scene = V.training_moving_scene(5, index, frames=4)
    return V.render_moving(scene), scene.caption


def _cfg(base: Path, out: Path, **changes) -> MotionTrainConfig:
    fields = dict(base=str(base), out=str(out), clips=6, frames=4, steps=4, batch_size=2, warmup=1, heads=2,
                  max_frames=8, checkpoint_every=2, sample_every=10**6, sample_steps=2)
    return MotionTrainConfig(**{**fields, **changes})


def test_only_motion_layers_learn_and_loss_falls(base):
    from diffusers import UNet2DConditionModel

    from huabu.training.diffusion import noise_scheduler
    from huabu.training.motion import build_motion_adapter, motion_loss, motion_modules, motion_unet

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


def test_x0_floor_weights_the_noisiest_steps_as_x0_prediction(base):
    from diffusers import UNet2DConditionModel
    from diffusers.training_utils import compute_snr

    from huabu.training.diffusion import noise_scheduler
    from huabu.training.motion import build_motion_adapter, motion_loss, motion_unet

    unet2d = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    unet = motion_unet(unet2d, build_motion_adapter(unet2d, heads=2, max_frames=8))
    gen = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(1, 4, 4, 8, 8, generator=gen), torch.randn(1, 4, 4, 8, 8, generator=gen)
    cond = torch.randn(1, 77, 32, generator=gen)
    sched = noise_scheduler()
    with torch.no_grad():
        # t=999: SNR 0.0047, so the floor weighs that clip about 213 times more; t=100: SNR > 1, no change
        for t, expected in ((999, 1 / float(compute_snr(sched, torch.tensor([999])))), (100, 1.0)):
            plain, floored = (motion_loss(unet, sched, x0, cond, noise, torch.tensor([t]), 5.0, x0_floor=floor)
                              for floor in (0.0, 1.0))
            assert float(floored / plain) == pytest.approx(expected, rel=1e-4), t


def test_fresh_adapter_leaves_the_image_model_unchanged(base):
    from diffusers import UNet2DConditionModel

    from huabu.training.motion import build_motion_adapter, motion_unet

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
    from huabu.training import motion as train_motion

    straight = train_motion.train_motion(_cfg(base, tmp_path / "straight", sample_every=4), clips, PROMPTS)
    killed = tmp_path / "killed"
    with monkeypatch.context() as m:
        kill_after(m, 2)
        with pytest.raises(Killed):
            train_motion.train_motion(_cfg(base, killed), clips, PROMPTS)
    assert [p.name for p in (killed / "checkpoints").glob("step-*")] == ["step-0000002"]
    train_motion.train_motion(_cfg(base, killed), clips, PROMPTS)
    a, b = newest_weights(tmp_path / "straight", "motion"), newest_weights(killed, "motion")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.endswith("proj_out.weight") and a[k].abs().max() > 0 for k in a)  # it learned something

    from PIL import Image

    with Image.open(tmp_path / "straight" / "samples-0000004.gif") as gif:
        assert gif.n_frames == 4 and gif.size == (32, 32)  # the base model's default size
    # The result is a MotionAdapter folder that `huabu video --motion-module` runs.
    from huabu.core.requests import VideoRequest
    from huabu.engine.generate import Engine

    result = Engine(settings, engine.models).generate_video(VideoRequest.create(
        prompt="a rocket moving up", model="tiny-sd", motion_module=str(straight), frames=4, width=32, height=32,
        steps=2, seed=1))
    assert len(result.frames) == 4 and "Motion module: final" in result.infotext


def test_clips_must_have_the_configured_frames(base, tmp_path):
    from huabu.core.errors import HuabuError
    from huabu.training.motion import train_motion

    with pytest.raises(HuabuError, match=r"uint8 \[3, H, W, 3\]"):
        train_motion(_cfg(base, tmp_path / "bad", frames=3), clips, PROMPTS)


def _straight_and_resumed(train_motion, cfg, tmp_path: Path, monkeypatch, parts: tuple[str, ...]) -> Path:
    """Train `cfg(out)` straight through and again killed after step 2 then resumed; the newest checkpoints of both
    must hold the same `parts`. Returns the straight run's final folder."""
    straight = train_motion.train_motion(cfg(tmp_path / "straight"), clips, PROMPTS)
    killed = tmp_path / "killed"
    with monkeypatch.context() as m:
        kill_after(m, 2)
        with pytest.raises(Killed):
            train_motion.train_motion(cfg(killed), clips, PROMPTS)
    train_motion.train_motion(cfg(killed), clips, PROMPTS)
    for part in parts:
        a, b = newest_weights(tmp_path / "straight", part), newest_weights(killed, part)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return straight


def _videos_with_and_without(module: Path, extra_file: str, tmp_path: Path, settings, engine) -> dict:
    """The same short video from `module` (key "final") and from a copy without `extra_file` (key "bare")."""
    import shutil

    from huabu.core.requests import VideoRequest
    from huabu.engine.generate import Engine

    bare = tmp_path / "bare"
    shutil.copytree(module, bare)
    (bare / extra_file).unlink()
    runs = {}
    for folder in (module, bare):
        runs[folder.name] = Engine(settings, engine.models).generate_video(VideoRequest.create(
            prompt="a rocket moving up", model="tiny-sd", motion_module=str(folder), frames=4, width=32, height=32,
            steps=2, seed=1))
    assert any(np.asarray(a, dtype=int).tolist() != np.asarray(b, dtype=int).tolist()
               for a, b in zip(runs["final"].frames, runs["bare"].frames))
    return runs


def test_a_text_lora_trains_beside_the_motion_module_resumes_and_loads(base, tmp_path, monkeypatch, settings, engine):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from huabu.training import motion as train_motion

    def cfg(out: Path) -> MotionTrainConfig:  # a high rate, so 4 steps change the images visibly
        return _cfg(base, out, text_lora_rank=4, lr=1e-2)

    straight = _straight_and_resumed(train_motion, cfg, tmp_path, monkeypatch, ("motion", "text_lora"))
    lora = newest_weights(tmp_path / "killed", "text_lora")
    assert any(".lora_B." in k and v.abs().max() > 0 for k, v in lora.items())  # B starts at zero: it learned

    with safe_open(str(straight / train_motion.TEXT_LORA_FILE), framework="pt") as f:  # an independent reader
        keys = list(f.keys())
        assert f.metadata()["ss_network_dim"] == "4"
    assert keys and all(k.startswith("unet.") and ".attentions." in k and ".attn2.to_" in k for k in keys)
    assert {k.rsplit(".", 2)[0].rsplit(".", 1)[1] for k in keys} == {"to_k", "to_v"}

    # The engine applies the LoRA whenever it runs the module (named in the infotext, not among the prompt's LoRAs).
    runs = _videos_with_and_without(straight, train_motion.TEXT_LORA_FILE, tmp_path, settings, engine)
    assert "Motion text LoRA: " in runs["final"].infotext and "Lora hashes" not in runs["final"].infotext
    assert "Motion text LoRA" not in runs["bare"].infotext

    # --init starts from that module: with no steps left to run, the result is the module it started from.
    again = train_motion.train_motion(_cfg(base, tmp_path / "again", init=str(straight), steps=0), clips, PROMPTS)
    first, second = (load_file(str(p / "diffusion_pytorch_model.safetensors")) for p in (straight, again))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_motion_words_train_beside_the_module_resume_and_run_in_the_engine(base, tmp_path, monkeypatch, settings,
                                                                           engine):
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from huabu.core.requests import GenerateRequest, VideoRequest
    from huabu.engine.generate import Engine
    from huabu.training import motion as train_motion

    def cfg(out: Path, **changes) -> MotionTrainConfig:  # a high rate, so 4 steps change the frames visibly
        return _cfg(base, out, motion_words_heads=2, motion_tokens="moving", lr=1e-2, motion_tokens_lr=1e-2, **changes)

    straight = _straight_and_resumed(train_motion, cfg, tmp_path, monkeypatch, ("motion", "words", "rows"))
    words = newest_weights(tmp_path / "killed", "words")
    assert any(k.endswith("mlp.2.weight") and v.abs().max() > 0 for k, v in words.items())  # starts at zero
    encoder_row = load_file(str(base / "text_encoder" / "model.safetensors"))["embeddings.token_embedding.weight"][3584]
    rows = newest_weights(tmp_path / "killed", "rows")
    assert rows["ids"].tolist() == [3584] and (rows["rows"][0] - encoder_row).abs().max() > 1e-3  # learned
    with safe_open(str(straight / train_motion.MOTION_WORDS_FILE), framework="pt") as f:  # an independent reader
        assert f.metadata()["huabu_kind"] == "motion_words" and f.metadata()["heads"] == "2"
        assert f.metadata()["tokens"] == '["moving</w>"]' and f.get_tensor("word_rows.rows").shape == (1, 32)

    # The engine hooks the words in whenever it runs the module, and names them in the infotext.
    still = GenerateRequest.create(prompt="a rocket moving up", model="tiny-sd", width=32, height=32, steps=2, seed=1)
    image = np.asarray(Engine(settings, engine.models).generate(still).images[0])  # before any video
    runs = _videos_with_and_without(straight, train_motion.MOTION_WORDS_FILE, tmp_path, settings, engine)
    assert "Motion words: " in runs["final"].infotext and "Motion words" not in runs["bare"].infotext

    # The word rows encode the video prompt, and only it: the same words file without them makes another video,
    # and the text encoder the still pipelines share is left without them.
    rowless = tmp_path / "rowless"
    shutil.copytree(straight, rowless)
    with safe_open(str(straight / train_motion.MOTION_WORDS_FILE), framework="pt") as f:
        layers = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("word_rows.")}
        metadata = {k: v for k, v in f.metadata().items() if k != "tokens"}
    save_file(layers, str(rowless / train_motion.MOTION_WORDS_FILE), metadata=metadata)
    video = Engine(settings, engine.models).generate_video(VideoRequest.create(
        prompt="a rocket moving up", model="tiny-sd", motion_module=str(rowless), frames=4, width=32, height=32,
        steps=2, seed=1))
    assert any(np.asarray(a, dtype=int).tolist() != np.asarray(b, dtype=int).tolist()
               for a, b in zip(runs["final"].frames, video.frames))
    assert not engine.models.load("tiny-sd").pipeline.text_encoder.get_input_embeddings()._forward_hooks
    assert np.array_equal(np.asarray(Engine(settings, engine.models).generate(still).images[0]), image)

    # --init carries the words on, asked for or not: with no steps left to run, the result has the words it started
    # from.
    again = train_motion.train_motion(_cfg(base, tmp_path / "again", init=str(straight), steps=0), clips, PROMPTS)
    first, second = (load_file(str(p / train_motion.MOTION_WORDS_FILE)) for p in (straight, again))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
