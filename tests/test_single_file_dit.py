"""SD3 / SD3.5 / FLUX single-file checkpoints: the SD3 export <-> diffusers' import round trip, loading every part
from one file (or the missing ones from a --model-config folder), and the kind detected from the keys."""

from __future__ import annotations

import logging

import pytest
import torch
from dit_support import build_tiny_sd3

from huabu.core.errors import ModelNotFound
from huabu.core.requests import GenerateRequest
from huabu.core.settings import Settings
from huabu.engine import single_file
from huabu.engine.bundled import bundled_configs
from huabu.engine.convert import export_single_file, sd3_transformer_to_ldm

PARTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("sd3-single")
    pipe = build_tiny_sd3()
    pipe.save_pretrained(home / "tiny-sd3")
    build_tiny_sd3(with_t5=False, seed=1).save_pretrained(home / "tiny-sd3-no-t5")
    export_single_file(pipe, home / "tiny-sd3.safetensors")
    return home


@pytest.fixture(scope="module")
def engine(home, tmp_path_factory):
    from huabu.engine.generate import Engine

    return Engine(Settings.for_home(home, outputs_dir=tmp_path_factory.mktemp("out"), device="cpu", dtype="fp32",
                                    hub_offline=True))


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("extra", [{}, {"qk_norm": "rms_norm", "dual_attention_layers": (0,)}], ids=["sd3", "sd3.5"])
def test_sd3_transformer_keys_round_trip_through_diffusers(extra):
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    model = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8,
                                  num_attention_heads=2, caption_projection_dim=16, joint_attention_dim=32,
                                  pooled_projection_dim=32, out_channels=16, **extra)
    for parameter in model.parameters():  # random everywhere, so a swapped half or a wrong q/k/v order shows
        torch.nn.init.normal_(parameter)
    state = model.state_dict()
    ldm = {"model.diffusion_model." + k: v for k, v in sd3_transformer_to_ldm(state, model.config).items()}
    assert "model.diffusion_model.joint_blocks.1.context_block.adaLN_modulation.1.bias" in ldm
    back = convert_sd3_transformer_checkpoint_to_diffusers(ldm)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_every_part_loads_from_the_file_and_generates_as_the_folder(engine, home):
    folder = engine.models.load(str(home / "tiny-sd3")).pipeline
    loaded = engine.models.load(str(home / "tiny-sd3.safetensors"), str(home / "tiny-sd3")).pipeline
    assert all(same_weights(getattr(folder, name), getattr(loaded, name)) for name in PARTS)
    request = {"prompt": "a red apple", "steps": 3, "width": 32, "height": 32, "seed": 5, "sampler": "Euler"}
    a = engine.generate(GenerateRequest(**request, model=str(home / "tiny-sd3"))).images[0]
    b = engine.generate(GenerateRequest(**request, model=str(home / "tiny-sd3.safetensors"),
                                        checkpoint_config=str(home / "tiny-sd3"))).images[0]
    assert a.tobytes() == b.tobytes()


def test_parts_missing_from_the_file_come_from_the_config_folder(engine, home):
    from safetensors.torch import save_file

    other = build_tiny_sd3(seed=3)
    state = {"model.diffusion_model." + k: v.contiguous()
             for k, v in sd3_transformer_to_ldm(other.transformer.state_dict(), other.transformer.config).items()}
    save_file(state, home / "transformer-only.safetensors")
    loaded = engine.models.load(str(home / "transformer-only.safetensors"), str(home / "tiny-sd3")).pipeline
    folder = engine.models.load(str(home / "tiny-sd3")).pipeline
    assert same_weights(loaded.transformer, other.transformer)
    assert not same_weights(loaded.transformer, folder.transformer)
    assert all(same_weights(getattr(loaded, name), getattr(folder, name)) for name in PARTS[1:])


def test_a_t5_the_config_cannot_tokenize_is_left_out_with_a_warning(engine, home, caplog):
    with caplog.at_level(logging.WARNING):
        loaded = engine.models.load(str(home / "tiny-sd3.safetensors"), str(home / "tiny-sd3-no-t5")).pipeline
    assert loaded.text_encoder_3 is None and loaded.tokenizer_3 is None
    assert "text_encoder_3 left out" in caplog.text


def test_a_file_without_config_names_its_family(engine, home):
    with pytest.raises(ModelNotFound, match="SD3 transformer of a size huabu has no config for"):
        engine.models.load(str(home / "tiny-sd3.safetensors"))


def meta(*shape):
    return torch.empty(shape, device="meta")


PREFIX = "model.diffusion_model."
SD3_BIAS = PREFIX + "joint_blocks.0.context_block.adaLN_modulation.1.bias"
FLUX_NORM = "double_blocks.0.img_attn.norm.key_norm.scale"


@pytest.mark.parametrize("state, expected", [
    ({SD3_BIAS: meta(9216), PREFIX + "pos_embed": meta(1, 36864, 1536)}, "sd3-medium"),
    ({SD3_BIAS: meta(9216), PREFIX + "pos_embed": meta(1, 147456, 1536)}, "sd35-medium"),
    ({SD3_BIAS: meta(14592), PREFIX + "joint_blocks.37.x_block.mlp.fc1.weight": meta(9728, 2432)}, "sd35-large"),
    ({FLUX_NORM: meta(128), "guidance_in.in_layer.bias": meta(3072), "img_in.weight": meta(3072, 64)}, "flux-dev"),
    ({PREFIX + FLUX_NORM: meta(128), PREFIX + "img_in.weight": meta(3072, 64)}, "flux-schnell"),
], ids=["sd3", "sd35-medium", "sd35-large", "flux-dev", "flux-schnell"])
def test_released_transformer_kinds_are_detected_from_the_keys(tmp_path, state, expected):
    folder, name = single_file.config_for(tmp_path / "model.safetensors", state, {}, None)
    assert name == expected and folder == bundled_configs()[expected]


def test_flux_transformer_alone_asks_for_a_folder_with_the_rest():
    state = {FLUX_NORM: meta(128), "img_in.weight": meta(3072, 64)}
    with pytest.raises(ModelNotFound) as error:
        single_file.assemble(state, bundled_configs()["flux-schnell"], None, "flux1-schnell.safetensors")
    message = str(error.value)
    assert "\n" not in message
    assert "lacks text_encoder, text_encoder_2, tokenizer_2, vae" in message and "diffusers FLUX folder" in message


# Parameter counts of the released transformers (diffusers configs), on the meta device.
@pytest.mark.parametrize("name, params", [("sd3-medium", 2_028_328_000), ("flux-dev", 11_901_408_320)])
def test_bundled_transformer_configs_describe_the_released_models(name, params):
    import diffusers
    from accelerate import init_empty_weights

    folder = bundled_configs()[name] / "transformer"
    cls = getattr(diffusers, "SD3Transformer2DModel" if name.startswith("sd3") else "FluxTransformer2DModel")
    with init_empty_weights():
        model = cls.from_config(cls.load_config(folder))
    assert sum(p.numel() for p in model.parameters()) == params
