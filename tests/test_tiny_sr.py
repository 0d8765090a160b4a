"""huabu-tiny-2x's recipe: the scene pairs it learns from, resumable training, the exported file as an upscaler."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from huabu.engine.upscalers import Upscalers
from huabu.tiny import scenes, train_sr


def test_pairs_are_one_scene_at_two_sizes():
    low, high = train_sr.scene_pair(scenes.training_scene(train_sr.SEED, 3))
    assert low.shape == (64, 64, 3) and high.shape == (128, 128, 3)
    down = np.asarray(Image.fromarray(high).resize((64, 64), Image.LANCZOS))
    assert train_sr.psnr(down, low) > 25  # the same picture, not another scene


def test_crops_are_the_same_window_of_both_renders_on_an_object():
    low, high = train_sr.batch(5, crop=40)
    assert low.shape == (train_sr.BATCH, 3, 40, 40) and high.shape == (train_sr.BATCH, 3, 80, 80)
    down = torch.nn.functional.interpolate(high, scale_factor=0.5, mode="area")
    assert (down - low).abs().mean() < 0.03  # the same place at both sizes
    flat = (low.amax(dim=(2, 3)) - low.amin(dim=(2, 3))).amax(dim=1)
    assert (flat > 0.2).all()  # every window holds more than background
    assert torch.equal(train_sr.batch(5, crop=40)[0], low)  # a pure function of the step: resuming sees the same


def test_training_resumes_and_exports_an_upscaler(tmp_path, monkeypatch):
    monkeypatch.setattr(train_sr, "BATCH", 2)
    first = train_sr.train(tmp_path / "run", 2)
    resumed = train_sr.train(tmp_path / "run", 2)  # nothing left to do: the checkpoint's weights come back
    for a, b in zip(first.state_dict().values(), resumed.state_dict().values()):
        assert np.array_equal(a.numpy(), b.numpy())
    train_sr.export(first, tmp_path / "upscalers" / "mine.safetensors")
    image = Image.fromarray(train_sr.scene_pair(scenes.training_scene(1, 0))[0])
    assert Upscalers(tmp_path / "upscalers").get("mine")(image, (128, 128)).size == (128, 128)


def test_shipped_huabu_tiny_2x_beats_lanczos_on_held_out_scenes():
    upscalers = Upscalers()
    assert "huabu-tiny-2x" in upscalers.names()
    ours, lanczos = [], []
    for scene in scenes.eval_single_scenes(12):
        low, high = train_sr.scene_pair(scene)
        ours.append(train_sr.psnr(np.asarray(upscalers.get("huabu-tiny-2x")(Image.fromarray(low), (128, 128))), high))
        lanczos.append(train_sr.psnr(np.asarray(upscalers.get("Lanczos")(Image.fromarray(low), (128, 128))), high))
    assert np.mean(ours) > np.mean(lanczos) + 2  # the recipe's target, on the first held-out scenes
