"""huabu-tiny-2x's recipe: the scene pairs it learns from, resumable training, the exported file as an upscaler."""

from __future__ import annotations

import numpy as np
from PIL import Image

from huabu.engine.upscalers import Upscalers
from huabu.tiny import scenes, train_sr


def test_pairs_are_one_scene_at_two_sizes():
    low, high = train_sr.scene_pair(scenes.training_scene(train_sr.SEED, 3))
    assert low.shape == (64, 64, 3) and high.shape == (128, 128, 3)
    down = np.asarray(Image.fromarray(high).resize((64, 64), Image.LANCZOS))
    assert train_sr.psnr(down, low) > 25  # the same picture, not another scene


def test_training_resumes_and_exports_an_upscaler(tmp_path, monkeypatch):
    monkeypatch.setattr(train_sr, "BATCH", 2)
    first = train_sr.train(tmp_path / "run", 2)
    resumed = train_sr.train(tmp_path / "run", 2)  # nothing left to do: the checkpoint's weights come back
    for a, b in zip(first.state_dict().values(), resumed.state_dict().values()):
        assert np.array_equal(a.numpy(), b.numpy())
    train_sr.export(first, tmp_path / "upscalers" / "mine.safetensors")
    image = Image.fromarray(train_sr.scene_pair(scenes.training_scene(1, 0))[0])
    assert Upscalers(tmp_path / "upscalers").get("mine")(image, (128, 128)).size == (128, 128)
