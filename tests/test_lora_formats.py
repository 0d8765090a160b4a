"""LoRA file formats: kohya <-> diffusers key mapping on real SD module names, exact round trips, the ss_* metadata
and kohya's addnet hashes, checked with an independent reader of the safetensors bytes."""

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save, save_file

from huabu.core.errors import HuabuError
from huabu.engine import lora_formats as formats

CONFIGS = Path(__file__).resolve().parents[1] / "huabu" / "engine" / "configs"


def _lora_module_names(model) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))]


@pytest.mark.parametrize("config", ["sd15", "sd2-v"])
def test_kohya_names_map_back_to_every_module_of_sd_unets_and_text_encoders(config):
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights():  # the real SD shapes, no memory
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(CONFIGS / config / "unet"))
        text = CLIPTextModel(CLIPTextConfig.from_json_file(CONFIGS / config / "text_encoder" / "config.json"))
    modules = [f"unet.{n}" for n in _lora_module_names(unet)]
    modules += [f"text_encoder.{n}" for n in _lora_module_names(text)]
    assert len(modules) > 300
    for module in modules:
        assert formats.module_from_kohya(formats.kohya_name(module)) == module


def test_kohya_names_are_the_ones_sd_scripts_writes():
    assert (formats.kohya_name("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
            == "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q")
    assert (formats.kohya_name("unet.up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_out.0")
            == "lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_attn2_to_out_0")
    assert (formats.kohya_name("text_encoder.encoder.layers.11.self_attn.q_proj")
            == "lora_te_text_model_encoder_layers_11_self_attn_q_proj")
    assert (formats.kohya_name("text_encoder_2.encoder.layers.0.mlp.fc1")
            == "lora_te2_text_model_encoder_layers_0_mlp_fc1")
    assert (formats.module_from_kohya("lora_unet_mid_block_resnets_0_time_emb_proj")
            == "unet.mid_block.resnets.0.time_emb_proj")


def _layers(seed: int = 0) -> formats.Layers:
    g = torch.Generator().manual_seed(seed)
    return {
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": formats.LoraLayer(
            torch.randn(4, 64, generator=g), torch.randn(64, 4, generator=g), 4.0),
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0": formats.LoraLayer(
            torch.randn(2, 64, generator=g), torch.randn(64, 2, generator=g), 1.0),  # another rank and alpha
        "unet.down_blocks.0.resnets.0.conv1": formats.LoraLayer(  # LyCORIS LoCon: a conv layer
            torch.randn(4, 32, 3, 3, generator=g), torch.randn(32, 4, 1, 1, generator=g), 4.0),
        "text_encoder.encoder.layers.0.self_attn.k_proj": formats.LoraLayer(
            torch.randn(4, 32, generator=g), torch.randn(32, 4, generator=g), 4.0),
    }


def _assert_same_layers(a: formats.Layers, b: formats.Layers) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key].down, b[key].down) and torch.equal(a[key].up, b[key].up), key
        assert a[key].alpha == b[key].alpha, key


def test_kohya_and_diffusers_state_dicts_round_trip_exactly():
    layers = _layers()
    _assert_same_layers(formats.from_kohya(formats.to_kohya(layers)), layers)
    state, adapter = formats.to_diffusers(layers)
    assert "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight" in state
    assert "text_encoder.text_model.encoder.layers.0.self_attn.k_proj.lora_B.weight" in state
    assert adapter["unet.r"] == 4 and adapter["unet.rank_pattern"] == {
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0": 2}
    _assert_same_layers(formats.from_diffusers(state, json.loads(json.dumps(adapter))), layers)


def _read_header(path: Path) -> tuple[dict, bytes]:
    """An independent safetensors reader: (header JSON, the bytes after it)."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def test_file_round_trip_kohya_diffusers_kohya_is_exact_and_keeps_metadata(tmp_path):
    meta = {"ss_network_module": formats.NETWORK_MODULE, "ss_network_dim": "4", "huabu_trigger_word": "zq"}
    kohya = formats.write_lora(tmp_path / "k.safetensors", _layers(), formats.KOHYA, meta, torch.float16)
    diffusers = formats.convert_lora(kohya, tmp_path / "d.safetensors", formats.DIFFUSERS)
    back = formats.convert_lora(diffusers, tmp_path / "k2.safetensors", formats.KOHYA)
    original, again = load_file(kohya), load_file(back)
    assert original.keys() == again.keys()
    assert all(torch.equal(original[k], again[k]) for k in original)
    assert original["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].dtype == torch.float16
    header, _ = _read_header(diffusers)
    assert header["__metadata__"]["huabu_trigger_word"] == "zq"
    adapter = json.loads(header["__metadata__"][formats.ADAPTER_METADATA_KEY])
    assert adapter["unet.lora_alpha"] == 4.0 and adapter["unet.alpha_pattern"]
    assert _read_header(back)[0]["__metadata__"]["sshs_model_hash"] == _read_header(kohya)[0]["__metadata__"][
        "sshs_model_hash"]


def test_sshs_hashes_are_kohyas_addnet_hashes_of_the_written_bytes(tmp_path):
    path = formats.write_lora(tmp_path / "x.safetensors", _layers(), formats.KOHYA, {"ss_steps": "10"})
    header, data = _read_header(path)
    assert header["__metadata__"]["sshs_model_hash"] == hashlib.sha256(data).hexdigest()
    assert formats.a1111_lora_hash(path) == hashlib.sha256(data).hexdigest()
    assert header["__metadata__"]["sshs_legacy_hash"] == hashlib.sha256(b"").hexdigest()[:8]  # file under 1 MiB
    big = {"lora_unet_a_to_q.lora_down.weight": torch.arange(300_000, dtype=torch.float32).reshape(1000, 300)}
    metadata = {"ss_network_dim": "1000", "other": "not hashed"}
    blob = save(big, {"ss_network_dim": "1000"})  # kohya hashes with the ss_* metadata only
    assert formats.addnet_hashes(big, metadata)[1] == hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]


def test_unusable_files_fail_with_one_line(tmp_path):
    torch.save({"a": torch.zeros(1)}, tmp_path / "pickled.safetensors")
    save_file({"model.weight": torch.zeros(2)}, tmp_path / "plain.safetensors")
    save_file({"lora_unet_x_to_q.hada_w1_a": torch.zeros(2, 2)}, tmp_path / "loha.safetensors")
    for name, words in [("pickled", "not a .safetensors"), ("plain", "neither kohya"), ("loha", "LyCORIS")]:
        with pytest.raises(HuabuError, match=words) as err:
            formats.read_lora(tmp_path / f"{name}.safetensors")
        assert "\n" not in str(err.value)
    with pytest.raises(HuabuError, match="SDXL-style"):
        formats.module_from_kohya("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q")
