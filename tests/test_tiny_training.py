"""huabu-tiny's training stages on toy sizes: a run killed after a checkpoint resumes to the same weights."""

import dataclasses
from pathlib import Path

import pytest
from training_support import Killed, assert_same, kill_after, newest_weights

from huabu.tiny import configs
from huabu.tiny.data import write_dataset


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("scenes") / "data", 96, seed=1, progress=False)


def _clip_cfg(data: Path, out: Path) -> configs.ClipTrainConfig:
    return configs.ClipTrainConfig(data=str(data), out=str(out), steps=4, batch_size=8, warmup=1, text_hidden=32,
                                   text_layers=1, vision_hidden=32, vision_layers=1, projection_dim=16,
                                   checkpoint_every=2, eval_every=10**6)


def test_clip_stage_resumes_identically(scenes, tmp_path, monkeypatch):
    from huabu.tiny import train_clip

    monkeypatch.setattr(train_clip, "retrieval_gate", lambda *a, **k: {})
    train_clip.train(_clip_cfg(scenes, tmp_path / "straight"))
    killed = tmp_path / "killed"
    with monkeypatch.context() as m:
        kill_after(m, 2)
        with pytest.raises(Killed):
            train_clip.train(_clip_cfg(scenes, killed))
    assert [p.name for p in (killed / "checkpoints").glob("step-*")] == ["step-0000002"]
    train_clip.train(_clip_cfg(scenes, killed))
    assert_same(newest_weights(tmp_path / "straight", "clip"), newest_weights(killed, "clip"))
    assert (killed / "final" / "config.json").is_file()


def _vae_cfg(data: Path, out: Path) -> configs.VaeTrainConfig:
    return configs.VaeTrainConfig(
        data=str(data),
        out=str(out),
        steps=4,
        stop_after=4,
        crop_steps=2,
        batch_size=4,
        warmup=1,
        channels=(8, 8, 8),
        checkpoint_every=2,
        sample_every=10**6,
    )


def test_vae_stage_resumes_identically_and_sets_latent_scale(scenes, tmp_path, monkeypatch):
    from huabu.tiny import train_vae

    result = train_vae.train(_vae_cfg(scenes, tmp_path / "straight"))
    killed = tmp_path / "killed"
    with monkeypatch.context() as m:
        kill_after(m, 2)
        with pytest.raises(Killed):
            train_vae.train(_vae_cfg(scenes, killed))
    train_vae.train(_vae_cfg(scenes, killed))
    assert_same(newest_weights(tmp_path / "straight", "vae"), newest_weights(killed, "vae"))
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tmp_path / "straight" / "final")
    assert vae.config.scaling_factor == pytest.approx(result["scaling_factor"])
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 4  # f=4: 64x64 pixels -> 16x16 latents


def test_unet_stage_resumes_identically_and_writes_samples(scenes, tmp_path, monkeypatch):
    from diffusers import AutoencoderKL
    from transformers import CLIPTokenizer

    from huabu.tiny import train_clip, train_unet, train_vae

    clip_dir, vae_dir = tmp_path / "clip", tmp_path / "vae"
    clip = train_clip.build_clip(_clip_cfg(scenes, tmp_path))
    clip.save_pretrained(clip_dir)
    CLIPTokenizer.from_pretrained(train_clip.TOKENIZER_DIR).save_pretrained(clip_dir)
    vae: AutoencoderKL = train_vae.build_vae(_vae_cfg(scenes, tmp_path))
    vae.save_pretrained(vae_dir)

    def cfg(out: Path) -> configs.UnetTrainConfig:
        return configs.UnetTrainConfig(data=str(scenes), clip=str(clip_dir), vae=str(vae_dir), out=str(out), steps=4,
                                       batch_size=4, warmup=1, channels=(32, 32, 32), heads=2,
                                       checkpoint_every=2, sample_every=10**6)

    monkeypatch.setattr(train_unet, "sample_prompts", lambda: ["a red apple on a blue background"] * 2)
    train_unet.train(cfg(tmp_path / "straight"))
    killed = tmp_path / "killed"
    with monkeypatch.context() as m:
        kill_after(m, 2)
        with pytest.raises(Killed):
            train_unet.train(cfg(killed))
    train_unet.train(cfg(killed))
    for name in ("unet", "ema"):
        assert_same(newest_weights(tmp_path / "straight", name), newest_weights(killed, name))
    assert (killed / "samples-0000004.png").is_file()
    assert (killed / "final" / "config.json").is_file()


def test_unet_stage_under_a_base_model_runs_in_that_models_pipeline(scenes, tmp_path, monkeypatch):
    import numpy as np
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel

    from huabu.engine.models import BUILTIN_DIR
    from huabu.tiny import train_unet
    from huabu.tiny.data import load_dataset
    from huabu.training.diffusion import to_tensor

    monkeypatch.setattr(train_unet, "sample_prompts", lambda: ["a red apple on a blue background"] * 2)
    cfg = configs.UnetTrainConfig(data=str(scenes), base="huabu-tiny", clip="nowhere", vae="nowhere",
                                  out=str(tmp_path / "run"), images=8, steps=2, batch_size=4, warmup=1,
                                  channels=(32, 32, 32), heads=2, checkpoint_every=2, sample_every=10**6)
    final = train_unet.train(cfg)
    # the latents are the shipped VAE's: the same cache the DiT stage writes, so one run's can serve the other
    vae = AutoencoderKL.from_pretrained(BUILTIN_DIR / "vae", dtype=torch.float32)
    latents = np.load(tmp_path / "run" / "latents.npy")
    with torch.no_grad():
        expected = vae.encode(to_tensor(load_dataset(scenes).images[:1])).latent_dist.mode() * vae.config.scaling_factor
    assert np.abs(latents[:1] - expected.numpy()).max() < 1e-2  # the cache is fp16
    unet = UNet2DConditionModel.from_pretrained(final)
    pipe = StableDiffusionPipeline.from_pretrained(BUILTIN_DIR, unet=unet, local_files_only=True,
                                                   dtype=torch.float32)
    image = pipe("a red apple", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_unet_stage_trains_its_text_encoder_on_chinese_captions_as_the_dit_stage_does(tmp_path, monkeypatch, capsys):
    import torch
    from diffusers import StableDiffusionPipeline

    from huabu.cli.main import main
    from huabu.core.errors import InvalidRequest
    from huabu.engine.models import BUILTIN_DIR
    from huabu.tiny import train_unet
    from huabu.tiny.data import load_dataset

    monkeypatch.setattr(train_unet, "sample_prompts", lambda: ["a red apple on a blue background"] * 2)
    world = write_dataset(tmp_path / "world", 16, seed=1, progress=False, world="geneval")
    cfg = configs.UnetTrainConfig(data=str(world), base="huabu-tiny", out=str(tmp_path / "run"), steps=2,
                                  batch_size=4, warmup=1, channels=(32, 32, 32), heads=2, checkpoint_every=2,
                                  sample_every=10**6, captions="zh")
    with pytest.raises(InvalidRequest, match="--text-lr"):  # the frozen CLIP never learnt a Chinese character
        train_unet.setup(cfg)
    final = train_unet.train(dataclasses.replace(cfg, captions="mix", text_lr=1e-3))
    folder = tmp_path / "model"
    # bad input: one line naming the option, and nothing written
    assert main(["tiny", "assemble", "--base", "huabu-tiny", "--unet", str(tmp_path / "none"), "--out",
                 str(folder)]) == 2
    assert main(["tiny", "assemble", "--base", "huabu-tiny", "--unet", str(final)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-2].startswith("error: --unet ") and "config.json" in err[-2] and "give --out" in err[-1]
    assert not folder.exists() and not list(tmp_path.glob(".model.*"))
    assert main(["tiny", "assemble", "--base", "huabu-tiny", "--unet", str(final), "--out", str(folder)]) == 0
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    caption = load_dataset(world).captions_in("zh")[0]
    assert len(pipe.tokenizer(caption, add_special_tokens=False).input_ids) == len(caption)  # a token a character
    base = StableDiffusionPipeline.from_pretrained(BUILTIN_DIR, local_files_only=True, dtype=torch.float32)
    assert pipe.tokenizer("a red apple").input_ids == base.tokenizer("a red apple").input_ids
    key = "encoder.layers.0.mlp.fc1.weight"  # the trained encoder is the one assembled: its English rows moved too
    assert (pipe.text_encoder.state_dict()[key] - base.text_encoder.state_dict()[key]).abs().max() > 1e-4
    vae_key = "decoder.conv_out.weight"
    assert torch.equal(pipe.vae.state_dict()[vae_key], base.vae.state_dict()[vae_key])
    image = pipe(caption, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_learning_rate_warms_up_linearly_and_zero_warmup_is_constant():
    from huabu.training.schedules import Schedule, lr_at

    warm = Schedule("constant", warmup=4)  # the UNet stage's schedule
    assert [lr_at(step, 1e-3, warm) for step in (0, 1, 3, 10)] == pytest.approx([2.5e-4, 5e-4, 1e-3, 1e-3])
    assert [lr_at(step, 1e-3, Schedule("constant", warmup=0)) for step in (0, 5)] == [1e-3, 1e-3]


def test_a_cancelled_stage_leaves_a_checkpoint_and_resumes_identically(scenes, tmp_path, monkeypatch):
    from huabu.tiny import train_clip

    monkeypatch.setattr(train_clip, "retrieval_gate", lambda *a, **k: {})
    train_clip.train(_clip_cfg(scenes, tmp_path / "straight"))
    asked = []
    train_clip.train(_clip_cfg(scenes, tmp_path / "cancelled"), cancel=lambda: asked.append(1) or len(asked) > 3)
    checkpoints = sorted(p.name for p in (tmp_path / "cancelled" / "checkpoints").glob("step-*"))
    assert checkpoints == ["step-0000002", "step-0000003"]  # every 2 steps, and where it stopped
    train_clip.train(_clip_cfg(scenes, tmp_path / "cancelled"))
    assert_same(newest_weights(tmp_path / "straight", "clip"), newest_weights(tmp_path / "cancelled", "clip"))
