"""LoRAs on transformer models: an SD3 LoRA in diffusers' format (transformer and CLIP-L, as diffusers' SD3 trainer
saves it) and a FLUX LoRA in kohya's keys (`lora_unet_double_blocks_*`, as sd-scripts and ComfyUI write them),
through diffusers' own loaders: they change the picture, weight 0 and the next request without them give the base
model's exact pixels, and the infotext names them as A1111 does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dit_support import build_tiny_flux, build_tiny_pixart, build_tiny_sd3
from safetensors.torch import save_file

from huabu.core.errors import InvalidRequest, ModelNotFound
from huabu.core.requests import GenerateRequest
from huabu.core.settings import Settings

REQUEST = {"steps": 3, "width": 32, "height": 32, "seed": 9, "sampler": "Euler"}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from huabu.engine.generate import Engine

    home = tmp_path_factory.mktemp("dit-loras")
    settings = Settings.for_home(home, outputs_dir=home / "outputs", device="cpu", dtype="fp32", hub_offline=True)
    build_tiny_sd3(with_t5=False).save_pretrained(home / "models" / "tiny-sd3")
    build_tiny_flux().save_pretrained(home / "models" / "tiny-flux")
    build_tiny_pixart().save_pretrained(home / "models" / "tiny-pixart")
    settings.loras_dir.mkdir(parents=True, exist_ok=True)
    _sd3_lora(settings.loras_dir)
    save_file(_kohya_flux_lora(), settings.loras_dir / "flux-kohya.safetensors",
              metadata={"ss_network_module": "networks.lora_flux"})
    key = "lora_unet_joint_blocks_0_x_block_attn_qkv"
    save_file({f"{key}.lora_down.weight": torch.ones(4, 16), f"{key}.lora_up.weight": torch.ones(48, 4)},
              settings.loras_dir / "sd3-kohya.safetensors")
    return Engine(settings)


def _sd3_lora(folder) -> None:
    from diffusers import StableDiffusion3Pipeline
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    pipe = build_tiny_sd3(with_t5=False, seed=4)
    torch.manual_seed(4)
    # init_lora_weights=False: random up matrices, so the LoRA changes the output from the first step
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                       target_modules=["to_q", "to_k", "to_v", "to_out.0"]), pipe.transformer)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                       target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]), pipe.text_encoder)
    StableDiffusion3Pipeline.save_lora_weights(
        folder, weight_name="sd3-style.safetensors",
        transformer_lora_layers=get_peft_model_state_dict(pipe.transformer),
        text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder))


def _kohya_flux_lora(rank: int = 4) -> dict[str, torch.Tensor]:
    """sd-scripts' FLUX keys for the tiny FLUX (width 32, MLP 128): the double block's fused qkv and projections and
    the single block's output projection."""
    g = torch.Generator().manual_seed(2)
    shapes = {"double_blocks_0_img_attn_qkv": (32, 96), "double_blocks_0_img_attn_proj": (32, 32),
              "double_blocks_0_txt_attn_qkv": (32, 96), "double_blocks_0_img_mlp_0": (32, 128),
              "single_blocks_0_linear2": (160, 32)}
    state = {}
    for name, (fan_in, fan_out) in shapes.items():
        state[f"lora_unet_{name}.lora_down.weight"] = torch.randn(rank, fan_in, generator=g) * 0.5
        state[f"lora_unet_{name}.lora_up.weight"] = torch.randn(fan_out, rank, generator=g) * 0.5
        state[f"lora_unet_{name}.alpha"] = torch.tensor(float(rank))
    return state


def make(engine, model: str, prompt: str):
    result = engine.generate(GenerateRequest(**REQUEST, model=model, prompt=prompt))
    return np.asarray(result.images[0], dtype=np.int16), result.infotexts[0]


@pytest.mark.parametrize("model, lora", [("tiny-sd3", "sd3-style"), ("tiny-flux", "flux-kohya")])
def test_lora_changes_the_picture_and_leaves_no_trace(engine, model, lora):
    base, _ = make(engine, model, "a red apple")
    styled, infotext = make(engine, model, f"a red apple <lora:{lora}:1>")
    assert np.abs(styled - base).mean() > 2
    assert f'Lora hashes: "{lora}: ' in infotext
    stronger, _ = make(engine, model, f"a red apple <lora:{lora}:1.5>")
    assert np.abs(stronger - base).mean() > np.abs(styled - base).mean() * 0.8
    assert np.array_equal(make(engine, model, f"a red apple <lora:{lora}:0>")[0], base)
    assert np.array_equal(make(engine, model, "a red apple")[0], base)  # the next request is the base model again


def test_sd3_lora_reaches_the_text_encoder(engine):
    pipe = engine.models.load("tiny-sd3").pipeline
    make(engine, "tiny-sd3", "a red apple <lora:sd3-style:1>")
    adapters = pipe.get_list_adapters()
    assert len(adapters["transformer"]) == 1 and adapters["text_encoder"] == adapters["transformer"]
    assert "text_encoder_2" not in adapters  # the file has no CLIP-G weights


def test_pixart_refuses_loras_in_one_line(engine):
    with pytest.raises(InvalidRequest, match="LoRAs load into SD, SDXL, SD3 and FLUX models only; this is a PixArt"):
        make(engine, "tiny-pixart", "a red apple <lora:sd3-style:1>")


def test_a_lora_diffusers_reads_nothing_from_is_refused_not_ignored(engine):
    base, _ = make(engine, "tiny-sd3", "a red apple")
    with pytest.raises(ModelNotFound, match="has no weights this model's layers take .*lora_unet_joint_blocks_0"):
        make(engine, "tiny-sd3", "a red apple <lora:sd3-kohya:1>")
    assert np.array_equal(make(engine, "tiny-sd3", "a red apple")[0], base)
