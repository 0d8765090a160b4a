"""LoRAs on transformer models: an SD3 LoRA in diffusers' format (transformer and CLIP-L, as diffusers' SD3 trainer
saves it) and a FLUX LoRA in kohya's keys (`lora_unet_double_blocks_*`, as sd-scripts and ComfyUI write them),
through diffusers' own loaders: they change the picture, weight 0 and the next request without them give the base
model's exact pixels, and the infotext names them as A1111 does."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from dit_support import build_tiny_flux, build_tiny_pixart, build_tiny_sd3
from safetensors.torch import save_file

from huabu.core.errors import InvalidRequest
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
    kohya, peft = _sd3_kohya_and_peft()
    save_file(kohya, settings.loras_dir / "sd3-kohya.safetensors")
    save_file(peft, settings.loras_dir / "sd3-peft.safetensors")
    save_file({"lora_unet_joint_blocks_7_x_block_attn_proj.lora_down.weight": torch.ones(4, 16),
               "lora_unet_joint_blocks_7_x_block_attn_proj.lora_up.weight": torch.ones(16, 4)},
              settings.loras_dir / "sd3-deeper.safetensors")
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


def _sd3_kohya_and_peft(rank: int = 4) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One LoRA written twice, by hand: in sd-scripts' SD3 keys (fused qkv, alpha 2 of rank 4) and in diffusers' PEFT
    keys (q / k / v apart, alpha folded into the up matrices). The tiny SD3 has one joint block (the last), width 16."""
    g = torch.Generator().manual_seed(6)
    kohya, peft = {}, {}
    down, up = torch.randn(rank, 16, generator=g), torch.randn(48, rank, generator=g)
    kohya |= {"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": down,
              "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": up,
              "lora_unet_joint_blocks_0_x_block_attn_qkv.alpha": torch.tensor(2.0)}
    for i, name in enumerate(("to_q", "to_k", "to_v")):
        peft[f"transformer.transformer_blocks.0.attn.{name}.lora_A.weight"] = down.clone()
        peft[f"transformer.transformer_blocks.0.attn.{name}.lora_B.weight"] = up[16 * i:16 * (i + 1)] * 0.5
    down, up = torch.randn(rank, 16, generator=g), torch.randn(64, rank, generator=g)
    kohya |= {"lora_unet_joint_blocks_0_x_block_mlp_fc1.lora_down.weight": down,
              "lora_unet_joint_blocks_0_x_block_mlp_fc1.lora_up.weight": up,
              "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.ones(rank, 16),
              "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.ones(16, rank)}
    peft["transformer.transformer_blocks.0.ff.net.0.proj.lora_A.weight"] = down
    peft["transformer.transformer_blocks.0.ff.net.0.proj.lora_B.weight"] = up  # no alpha: scale 1
    return kohya, peft


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


def test_kohya_sd3_keys_draw_what_the_same_lora_in_diffusers_keys_draws(engine, caplog):
    base, _ = make(engine, "tiny-sd3", "a red apple")
    with caplog.at_level(logging.WARNING):
        kohya, _ = make(engine, "tiny-sd3", "a red apple <lora:sd3-kohya:1>")
    assert "text-encoder layers (te1) are left out" in caplog.text
    peft, _ = make(engine, "tiny-sd3", "a red apple <lora:sd3-peft:1>")
    assert np.abs(kohya - base).mean() > 2
    assert np.abs(kohya - peft).max() <= 1


def test_a_lora_for_a_deeper_sd3_is_refused_in_one_line(engine):
    with pytest.raises(InvalidRequest, match="joint_blocks_7_x_block_attn_proj' has no counterpart in this "
                                             "transformer \\(block 7, the model has 1\\)"):
        make(engine, "tiny-sd3", "a red apple <lora:sd3-deeper:1>")
