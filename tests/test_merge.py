"""Checkpoint merger (huabu.engine.merge, `huabu merge`): A1111's arithmetic per key read back with safe_open,
its merge metadata, VAE and LoRA baking, and huabu-tiny merged with itself drawing the same pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from huabu.cli.main import main
from huabu.core.errors import InvalidRequest
from huabu.core.requests import GenerateRequest, LoraSpec
from huabu.engine.convert import export_single_file
from huabu.engine.merge import MergeRecipe, merge_checkpoints
from huabu.engine.models import builtin_has_weights

UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"


@pytest.fixture(scope="module")
def other(model_store, tmp_path_factory):
    """A second tiny model of the same shape as tiny-sd, with other weights (single file)."""
    from conftest import build_tiny_pipeline

    return export_single_file(build_tiny_pipeline(seed=7), tmp_path_factory.mktemp("merge") / "other.safetensors")


def _merge(settings, out, **fields):
    return merge_checkpoints(MergeRecipe(**fields), settings, out)


def test_weighted_sum_and_add_difference_follow_a1111(settings, model_store, other, tmp_path):
    a, b = load_file(model_store["single"]), load_file(other)
    summed = load_file(_merge(settings, tmp_path / "ws.safetensors", primary=str(model_store["single"]),
                              secondary=str(other), alpha=0.3))
    for key in (UNET_KEY, "first_stage_model.decoder.conv_out.weight",
                "cond_stage_model.transformer.text_model.final_layer_norm.weight"):
        assert torch.allclose(summed[key], 0.7 * a[key] + 0.3 * b[key], atol=1e-6)
    # A + (B - C) * alpha with C = A is the same weighted sum; the folder input is read as the same LDM keys
    added = load_file(_merge(settings, tmp_path / "ad.safetensors", primary=str(model_store["folder"]),
                             secondary=str(other), tertiary=str(model_store["single"]), method="add-difference",
                             alpha=0.3))
    assert set(added) == set(summed)
    assert max(float((added[k] - summed[k]).abs().max()) for k in summed if summed[k].is_floating_point()) < 1e-5


def test_merge_metadata_is_a1111s(settings, model_store, other, tmp_path):
    out = _merge(settings, tmp_path / "m.safetensors", primary=str(model_store["single"]), secondary=str(other),
                 alpha=0.25, fp16=True)
    with safe_open(out, framework="pt") as f:
        metadata = f.metadata()
        assert f.get_tensor(UNET_KEY).dtype == torch.float16
    recipe = json.loads(metadata["sd_merge_recipe"])
    assert recipe["type"] == "webui" and recipe["interp_method"] == "Weighted sum"
    assert recipe["multiplier"] == 0.25 and recipe["save_as_half"] is True and recipe["tertiary_model_hash"] is None
    models = json.loads(metadata["sd_merge_models"])
    assert {entry["name"] for entry in models.values()} == {"tiny-single", "other"}
    assert recipe["primary_model_hash"] in models and len(recipe["primary_model_hash"]) == 64


def test_inpainting_a_merges_its_first_four_input_channels(settings, model_store, other, tmp_path):
    out = load_file(_merge(settings, tmp_path / "inp.safetensors", primary=str(model_store["inpaint"]),
                           secondary=str(other), alpha=0.5))
    a = export_single_file(model_store["inpaint"], tmp_path / "a.safetensors")
    a, b = load_file(a)[UNET_KEY], load_file(other)[UNET_KEY]
    assert out[UNET_KEY].shape[1] == 9
    assert torch.allclose(out[UNET_KEY][:, :4], 0.5 * a[:, :4] + 0.5 * b, atol=1e-6)
    assert torch.equal(out[UNET_KEY][:, 4:], a[:, 4:])
    assert json.loads(safe_open(tmp_path / "inp.safetensors", "pt").metadata()["sd_merge_recipe"])["is_inpainting"]
    with pytest.raises(InvalidRequest, match="A must be the inpainting model"):
        _merge(settings, tmp_path / "x.safetensors", primary=str(other), secondary=str(model_store["inpaint"]))


def test_baked_vae_replaces_the_first_stage(settings, model_store, other, tmp_path):
    vae = {k[len("first_stage_model."):]: v for k, v in load_file(other).items() if k.startswith("first_stage_model.")}
    save_file(vae, tmp_path / "vae.safetensors")
    out = load_file(_merge(settings, tmp_path / "v.safetensors", primary=str(model_store["single"]),
                           method="no-interpolation", vae=str(tmp_path / "vae.safetensors")))
    a = load_file(model_store["single"])
    assert all(torch.equal(out["first_stage_model." + k], v) for k, v in vae.items())
    assert torch.equal(out[UNET_KEY], a[UNET_KEY])


def test_baked_lora_draws_what_the_lora_tag_draws(engine, settings, model_store, tmp_path):
    from test_lora_inference import _kohya_state

    pipe = engine.models.load(str(model_store["folder"])).pipeline
    settings.loras_dir.mkdir(parents=True, exist_ok=True)
    save_file(_kohya_state(pipe, 3), settings.loras_dir / "bake-me.safetensors")
    out = _merge(settings, tmp_path / "baked.safetensors", primary=str(model_store["single"]),
                 method="no-interpolation", loras=(LoraSpec(name="bake-me", weight=0.6),),
                 config=str(model_store["folder"]))
    fields = dict(steps=4, seed=9, width=32, height=32, checkpoint_config=str(model_store["folder"]))
    tagged = engine.generate(GenerateRequest.create(prompt="a cat <lora:bake-me:0.6>", model=str(model_store["single"]),
                                                    **fields)).images[0]
    baked = engine.generate(GenerateRequest.create(prompt="a cat", model=str(out), **fields)).images[0]
    plain = engine.generate(GenerateRequest.create(prompt="a cat", model=str(model_store["single"]),
                                                   **fields)).images[0]
    diff = np.abs(np.asarray(tagged, np.int16) - np.asarray(baked, np.int16))
    assert diff.max() <= 2
    assert np.abs(np.asarray(plain, np.int16) - np.asarray(baked, np.int16)).max() > 10


def test_cli_refuses_a_missing_model_and_bad_output(huabu_env, model_store, tmp_path, capsys):
    assert main(["merge", str(model_store["single"]), "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "weighted-sum merges two models" in capsys.readouterr().err
    assert main(["merge", str(model_store["single"]), str(model_store["single"]), "-o", str(tmp_path / "x.ckpt")]) == 2
    assert "name it .safetensors" in capsys.readouterr().err


@pytest.mark.skipif(not builtin_has_weights(), reason="huabu-tiny weights are not in this checkout")
def test_huabu_tiny_merged_with_itself_draws_the_same_pixels(huabu_env, engine, tmp_path, capsys):
    out = tmp_path / "self.safetensors"
    assert main(["merge", "huabu-tiny", "huabu-tiny", "--alpha", "0.37", "--fp16", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    fields = dict(prompt="a red apple on a blue background", steps=6, seed=3, width=64, height=64)
    base = engine.generate(GenerateRequest.create(model="huabu-tiny", **fields)).images[0]
    merged = engine.generate(GenerateRequest.create(model=str(out), **fields)).images[0]
    assert np.array_equal(np.asarray(base), np.asarray(merged))
