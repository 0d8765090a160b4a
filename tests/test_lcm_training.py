"""`huabu train lcm` (huabu.training.lcm) on the tiny test model: the consistency boundary, exact resume after a
kill, and a LoRA file that the engine loads and that changes what the model draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open
from training_support import Killed, assert_same, kill_after, newest_weights

from huabu.core.requests import GenerateRequest
from huabu.training.lcm import boundary_scalings
from huabu.training.lcm_config import LcmTrainConfig


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from huabu.tiny.data import write_dataset

    return write_dataset(tmp_path_factory.mktemp("scenes"), count=24, progress=False)


def config(model_store, scenes, out, **changes) -> LcmTrainConfig:
    fields = dict(teacher=str(model_store["folder"]), data=str(scenes), out=str(out), steps=3, batch_size=2,
                  rank=4, alpha=4.0, warmup=1, ddim_steps=10, checkpoint_every=2, sample_every=0, lr=1e-2)
    return LcmTrainConfig(**{**fields, **changes})


def test_the_prediction_is_the_input_at_time_zero_and_mostly_the_model_later():
    c_skip, c_out = boundary_scalings(torch.tensor([0, 999]))
    assert c_skip.flatten().tolist() == [1.0, pytest.approx(0.0, abs=1e-6)]
    assert c_out.flatten().tolist() == [0.0, pytest.approx(1.0, abs=1e-6)]


def test_a_killed_distillation_resumes_exactly_and_its_lora_changes_the_images(model_store, scenes, settings,
                                                                               tmp_path, monkeypatch):
    from huabu.engine.generate import Engine
    from huabu.training.lcm import train

    straight = train(config(model_store, scenes, tmp_path / "straight"))
    with monkeypatch.context() as m:
        kill_after(m, 2)
        with pytest.raises(Killed):
            train(config(model_store, scenes, tmp_path / "killed"))
    train(config(model_store, scenes, tmp_path / "killed"))
    assert_same(newest_weights(tmp_path / "straight", "lora"), newest_weights(tmp_path / "killed", "lora"))

    with safe_open(str(straight), framework="pt") as f:  # an independent reader
        keys = list(f.keys())
        assert f.metadata()["huabu_lcm"] == "1"
        assert {f.get_tensor(k).dtype for k in keys} == {torch.float16}
    assert any(".ff.net.2." in k for k in keys) and all(k.startswith("unet.") for k in keys)

    engine = Engine(settings)
    base = dict(prompt="a red apple", steps=4, width=32, height=32, seed=3, sampler="LCM", cfg_scale=1.0,
                model=str(model_store["folder"]))
    plain = engine.generate(GenerateRequest.create(**base))
    fast = engine.generate(GenerateRequest.create(**base, loras=[{"name": str(straight)}]))
    difference = np.abs(np.asarray(fast.images[0], dtype=int) - np.asarray(plain.images[0], dtype=int))
    assert difference.max() > 0
    assert "Lora hashes" in fast.infotexts[0]
