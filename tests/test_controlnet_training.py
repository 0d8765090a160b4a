"""ControlNet training on a tiny base model: the loss falls, a killed run resumes exactly, sample grids, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from training_support import Killed, kill_after, newest_weights

from huabu.core.errors import InvalidRequest
from huabu.training import controlnet as train
from huabu.training.controlnet_config import ControlNetTrainConfig


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from huabu.tiny.data import write_dataset

    return write_dataset(tmp_path_factory.mktemp("scenes") / "data", 12, seed=3, progress=False)


def config(model_store, scenes, out: Path, **changes) -> ControlNetTrainConfig:
    fields = dict(type="canny", base=str(model_store["folder"]), data=str(scenes), out=str(out), steps=4,
                  batch_size=4, lr=1e-3, warmup=1, checkpoint_every=2, sample_every=10**6, samples=3, sample_steps=2)
    fields.update(changes)
    return ControlNetTrainConfig(**fields)


def test_killed_run_resumes_to_the_same_weights(model_store, scenes, settings, tmp_path, monkeypatch):
    train.train_controlnet(config(model_store, scenes, tmp_path / "straight"), settings=settings)
    killed = tmp_path / "killed"
    with monkeypatch.context() as m:
        kill_after(m, 2)
        with pytest.raises(Killed):
            train.train_controlnet(config(model_store, scenes, killed), settings=settings)
    assert [p.name for p in (killed / "checkpoints").glob("step-*")] == ["step-0000002"]
    final = train.train_controlnet(config(model_store, scenes, killed), settings=settings)
    straight, resumed = newest_weights(tmp_path / "straight", "controlnet"), newest_weights(killed, "controlnet")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)
    assert (final / "config.json").is_file() and (killed / "log.jsonl").read_text().strip()


def test_training_lowers_the_loss_and_writes_sample_grids(model_store, scenes, settings, tmp_path):
    from diffusers import ControlNetModel

    cfg = config(model_store, scenes, tmp_path / "run", steps=12, checkpoint_every=100, sample_every=12)
    final = train.train_controlnet(cfg, settings=settings)
    trained = ControlNetModel.from_pretrained(final)
    assert list(trained.config.conditioning_embedding_out_channels) == [16, 32, 64]  # 4x: the tiny VAE factor
    from huabu.tiny.data import load_dataset

    data = load_dataset(scenes)
    frozen = train.load_frozen(cfg, data.images, settings)
    initial = train.build_controlnet(cfg, frozen.unet, 4)
    with torch.no_grad():
        probes = [train.batch_at(cfg, data, frozen, step) for step in range(4)]
        before = np.mean([train.batch_loss(initial, frozen, b, 0.0, "cpu").item() for b in probes])
        after = np.mean([train.batch_loss(trained, frozen, b, 0.0, "cpu").item() for b in probes])
    assert after < 0.97 * before, (before, after)  # 1.118 -> 1.050 when written
    grid = Image.open(tmp_path / "run" / "samples-0000012.png")
    assert grid.size == (3 * 64, 2 * 64)  # control maps above outputs
    top = np.asarray(grid)[:64, :64]
    assert set(np.unique(top)) <= {0, 255}  # the first control map is a Canny edge map


def test_control_maps_follow_the_preprocessor(scenes):
    from huabu.tiny.data import load_dataset

    images = load_dataset(scenes).images[:2]
    edges, colours = train.control_maps("canny", images), train.control_maps("color", images)
    assert edges.shape == colours.shape == (2, 3, 64, 64)
    assert set(torch.unique(edges).tolist()) <= {0.0, 1.0} and edges.max() == 1.0
    assert len(torch.unique(colours[0, 0])) <= 64  # an 8x8 grid of block colours


def test_noise_offset_shifts_whole_channels(model_store, scenes, settings, tmp_path):
    from huabu.tiny.data import load_dataset

    data = load_dataset(scenes)
    plain, offset = (config(model_store, scenes, tmp_path, noise_offset=value) for value in (0.0, 3.0))
    frozen = train.load_frozen(plain, data.images, settings)
    channel_means = {cfg.noise_offset: torch.cat([train.batch_at(cfg, data, frozen, step).noise.mean(dim=(2, 3))
                                                  for step in range(8)]) for cfg in (plain, offset)}
    assert float(channel_means[0.0].std()) < 0.3  # means of 64 unit normals per channel: std 1/8
    assert 2.0 < float(channel_means[3.0].std()) < 4.0  # the per-channel offset of std 3 dominates


@pytest.mark.parametrize("changes, pattern", [
    ({"type": "scribble"}, "unknown preprocessor 'scribble'"),
    ({"embedding_channels": (16, 32, 96, 256)}, "shrink control images 8x but the VAE factor is 4"),
    ({"caption_dropout": 1.5}, "caption_dropout must be between 0 and 1"),
    ({"timesteps": "logit"}, "timesteps must be one of uniform, cubic"),
])
def test_bad_configs_give_one_line_errors(model_store, scenes, settings, tmp_path, changes, pattern):
    with pytest.raises(InvalidRequest, match=pattern):
        train.train_controlnet(config(model_store, scenes, tmp_path / "bad", **changes), settings=settings)


def test_cli_stage_trains_and_refuses_to_mix_runs(model_store, scenes, huabu_env, tmp_path, capsys):
    from huabu.cli.main import main

    out = tmp_path / "cli-run"
    argv = ["train", "controlnet", "--type", "color", "--base", str(model_store["folder"]), "--data", str(scenes),
            "--out", str(out), "--steps", "2", "--batch-size", "2", "--samples", "2", "--sample-steps", "1",
            "--embedding-channels", "16,32,64"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out / "final")
    assert (out / "final" / "diffusion_pytorch_model.safetensors").is_file() and (out / "samples-0000002.png").is_file()
    argv[argv.index("color")] = "canny"
    assert main(argv) == 2
    assert "holds a run made with type = 'color', this run has 'canny'" in capsys.readouterr().err


def test_a_run_can_start_from_a_shipped_controlnet(model_store, scenes, settings, tmp_path):
    from diffusers import ControlNetModel

    from huabu.tiny.data import load_dataset

    first = train.train_controlnet(config(model_store, scenes, tmp_path / "first", steps=2), settings=settings)
    ControlNetModel.from_pretrained(first).half().save_pretrained(tmp_path / "fp16")  # as ship-controlnet writes it
    cfg = config(model_store, scenes, tmp_path / "second", init=str(tmp_path / "fp16"))
    frozen = train.load_frozen(cfg, load_dataset(scenes).images, settings)
    shipped = ControlNetModel.from_pretrained(tmp_path / "fp16").state_dict()
    start = train.build_controlnet(cfg, frozen.unet, 4).state_dict()
    assert start.keys() == shipped.keys()
    assert all(start[k].dtype == torch.float32 and torch.equal(start[k], shipped[k].float()) for k in start)
    assert start["controlnet_mid_block.weight"].abs().sum() > 0  # trained, not the zero convolution of a fresh copy

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tmp_path / "fp16" / "config.json").read_text())
    torch.save(shipped, pickled / "diffusion_pytorch_model.bin")
    with pytest.raises(InvalidRequest, match="cannot start from ControlNet"):
        train.build_controlnet(config(model_store, scenes, tmp_path, init=str(pickled)), frozen.unet, 4)
    ControlNetModel.from_unet(frozen.unet, conditioning_embedding_out_channels=(16, 32, 96, 256)).save_pretrained(
        tmp_path / "for-8x")
    with pytest.raises(InvalidRequest, match="shrinks control images 8x but this model's VAE works at 4x"):
        train.build_controlnet(config(model_store, scenes, tmp_path, init=str(tmp_path / "for-8x")), frozen.unet, 4)
