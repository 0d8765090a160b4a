"""The shipped huabu-tiny-dit: a plain SD3 folder under 60 MB, by name in the engine, reading Chinese prompts."""

import numpy as np
import pytest

from huabu.engine.bundled import SHIPPED_MODELS, shipped_models

DIT_DIR = SHIPPED_MODELS["huabu-tiny-dit"]
pytestmark = pytest.mark.skipif("huabu-tiny-dit" not in shipped_models(),
                                reason="huabu-tiny-dit weights are not in this checkout")


def test_folder_is_small_and_loads_with_plain_diffusers():
    import torch
    from diffusers import StableDiffusion3Pipeline

    size = sum(p.stat().st_size for p in DIT_DIR.rglob("*") if p.is_file())
    assert size < 60e6
    pipe = StableDiffusion3Pipeline.from_pretrained(DIT_DIR, text_encoder_3=None, tokenizer_3=None,
                                                    local_files_only=True, dtype=torch.float32)
    assert pipe.transformer.config.sample_size * pipe.vae_scale_factor == 64
    # each Chinese character of the captions is one token, not a run of byte pieces
    assert len(pipe.tokenizer("红苹果", add_special_tokens=False).input_ids) == 3


@pytest.mark.parametrize("prompt", ["a red apple on a blue background", "一个红苹果在蓝色背景上"])
def test_follows_english_and_chinese_prompts_by_name(engine, prompt):
    from huabu.core.requests import GenerateRequest
    from huabu.tiny.measure import background_colour

    assert engine.models.reads_chinese("huabu-tiny-dit")
    result = engine.generate(GenerateRequest.create(prompt=prompt, model="huabu-tiny-dit", sampler="Euler",
                                                    seed=0, steps=20, cfg_scale=5, batch_size=2))
    assert result.images[0].size == (64, 64)
    assert [background_colour(np.asarray(im))[0] for im in result.images] == ["blue", "blue"]
    assert "Model: huabu-tiny-dit" in result.infotexts[0]


def test_exports_as_one_sd3_file_that_loads_offline_and_draws_the_same(engine, tmp_path, monkeypatch, capsys):
    from safetensors import safe_open

    from huabu.cli.main import main
    from huabu.core.requests import GenerateRequest

    monkeypatch.chdir(tmp_path)
    assert main(["tiny", "export", "--model", "huabu-tiny-dit"]) == 0
    path = tmp_path / "huabu-tiny-dit.safetensors"
    with safe_open(path, "pt") as f:  # SD3's reference layout, as ComfyUI reads it
        keys = set(f.keys())
        assert f.metadata()["huabu_config"] == "huabu-tiny-dit"
    assert "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight" in keys
    assert "text_encoders.clip_g.transformer.text_model.final_layer_norm.weight" in keys
    request = {"prompt": "a red apple on a blue background", "steps": 4, "seed": 3, "sampler": "Euler"}
    folder = engine.generate(GenerateRequest(**request, model="huabu-tiny-dit")).images[0]
    single = engine.generate(GenerateRequest(**request, model=str(path))).images[0]
    assert np.array_equal(np.asarray(folder), np.asarray(single))
