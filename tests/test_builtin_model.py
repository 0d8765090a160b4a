"""The shipped huabu-tiny: a standard diffusers folder that follows prompts, and an identical single-file export."""

from pathlib import Path

import numpy as np
import pytest

from huabu.engine.models import BUILTIN_DIR, builtin_has_weights

pytestmark = pytest.mark.skipif(not builtin_has_weights(), reason="huabu-tiny weights are not in this checkout")


def test_folder_is_small_and_loads_with_plain_diffusers():
    import torch
    from diffusers import StableDiffusionPipeline

    size = sum(p.stat().st_size for p in BUILTIN_DIR.rglob("*") if p.is_file())
    assert size < 60e6
    pipe = StableDiffusionPipeline.from_pretrained(BUILTIN_DIR, local_files_only=True, dtype=torch.float32)
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.sample_size * 4 == 64


def test_builtin_model_follows_the_prompt(engine):
    from huabu.core.requests import GenerateRequest
    from huabu.tiny.measure import background_colour

    result = engine.generate(GenerateRequest.create(prompt="a red apple on a blue background", seed=0, steps=20,
                                                    batch_size=2))
    assert result.images[0].size == (64, 64)
    assert [background_colour(np.asarray(im))[0] for im in result.images] == ["blue", "blue"]


def test_single_file_export_gives_the_same_image(engine, tmp_path: Path):
    from huabu.core.requests import GenerateRequest
    from huabu.engine.convert import export_single_file

    single = export_single_file(BUILTIN_DIR, tmp_path / "huabu-tiny.safetensors", config_name="huabu-tiny")
    images = []
    for model in ("huabu-tiny", str(single)):
        result = engine.generate(GenerateRequest.create(prompt="a rocket at the top on a black background",
                                                        model=model, seed=3, steps=8))
        images.append(np.asarray(result.images[0]))
    assert result.model["kind"] == "single-file"
    assert np.array_equal(images[0], images[1])
