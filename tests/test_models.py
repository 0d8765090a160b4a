"""The model registry: resolving specs, single-file loading offline, from_pipe sharing, the cache, bundled configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from huabu.core.errors import ModelNotFound
from huabu.core.requests import GenerateRequest
from huabu.engine.convert import unet_to_ldm, vae_to_ldm
from huabu.engine.models import BUILTIN_DIR, ModelManager, bundled_configs
from huabu.engine.pipelines import mode_pipeline


def generate(engine, model, **fields):
    data = dict(prompt="a red apple", steps=3, width=32, height=32, seed=7, model=str(model))
    data.update(fields)
    return engine.generate(GenerateRequest.create(**data))


def test_folder_and_ldm_single_file_give_the_same_image(engine, model_store):
    folder = generate(engine, model_store["folder"])
    single = generate(engine, model_store["single"], checkpoint_config=str(model_store["folder"]))
    assert single.model["kind"] == "single-file" and folder.model["kind"] == "diffusers"
    assert np.array_equal(np.asarray(folder.images[0]), np.asarray(single.images[0]))
    assert single.model["hash"] != folder.model["hash"]  # each is hashed from its own file


def test_single_file_of_unknown_shape_asks_for_a_config(settings, model_store):
    with pytest.raises(ModelNotFound, match=r"does not fit the sd15 config .* --model-config"):
        ModelManager(settings).load(str(model_store["single"]))


def test_pickle_checkpoint_loads_only_when_allowed(settings, model_store):
    config = str(model_store["folder"])
    allowed = ModelManager(settings.with_(allow_unsafe_pickle=True))
    loaded = allowed.load(str(model_store["ckpt"]), config)
    # A fresh manager: the session engine's copy may hold (disabled) LoRA adapters from other tests.
    reference = ModelManager(settings).load(config).pipeline.unet.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in loaded.pipeline.unet.state_dict().items())


def test_mode_pipelines_share_components_and_never_reload(settings, model_store, monkeypatch):
    models = ModelManager(settings)
    calls = []
    original = ModelManager._load_uncached
    monkeypatch.setattr(ModelManager, "_load_uncached", lambda self, ref: calls.append(ref) or original(self, ref))
    loaded = models.load(str(model_store["folder"]))
    pipes = {mode: mode_pipeline(loaded, mode) for mode in ("txt2img", "img2img", "inpaint", "txt2img")}
    assert [type(p).__name__ for p in pipes.values()] == [
        "StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"]
    for pipe in pipes.values():
        for name in ("unet", "vae", "text_encoder", "tokenizer"):
            assert getattr(pipe, name) is getattr(loaded.pipeline, name)
    assert models.load(str(model_store["folder"])) is loaded
    assert models.load("tiny-sd") is loaded  # the same folder by its name in the models dir
    assert mode_pipeline(loaded, "img2img") is pipes["img2img"]
    assert len(calls) == 1


def test_cache_keeps_the_most_recent_models(settings, model_store):
    models = ModelManager(settings.with_(model_cache_size=1))
    first = models.load(str(model_store["folder"]))
    models.load(str(model_store["inpaint"]))
    assert [m.name for m in models.loaded()] == ["tiny-inpaint"]
    assert models.load(str(model_store["folder"])) is not first  # evicted, so loaded again


def test_model_facts(engine, model_store):
    plain = engine.models.load(str(model_store["folder"]))
    inpaint = engine.models.load(str(model_store["inpaint"]))
    f8 = engine.models.load(str(model_store["f8"]))
    assert (plain.vae_scale_factor, plain.default_size, plain.is_inpaint_unet) == (4, 32, False)
    assert (inpaint.is_inpaint_unet, f8.vae_scale_factor, f8.default_size) == (True, 8, 64)
    assert plain.name == "tiny-sd" and len(plain.sha256) == 64 and plain.short_hash == plain.sha256[:10]
    assert plain.scheduler_config["_class_name"] == "PNDMScheduler"


def chinese_reading_folder(folder):
    """A model folder whose tokenizer keeps huabu-tiny-dit's caption characters whole, as its own does."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(BUILTIN_DIR / "tokenizer")
    tok.add_tokens(list("红色背景"))
    tok.save_pretrained(folder / "tokenizer")
    (folder / "model_index.json").write_text("{}")
    return folder


def test_resolving_specs(settings, model_store, monkeypatch, tmp_path):
    shipped = tmp_path / "huabu-tiny-dit"
    shipped.mkdir()
    (shipped / "model_index.json").write_text("{}")
    monkeypatch.setattr("huabu.engine.models.SHIPPED_MODELS", {"huabu-tiny-dit": shipped,
                                                               "huabu-tiny-absent": tmp_path / "absent"})
    models = ModelManager(settings)
    assert models.resolve("huabu-tiny-dit").location == str(shipped)  # shipped beside huabu-tiny, by name
    with pytest.raises(ModelNotFound, match="no model named 'huabu-tiny-absent'"):  # not in this checkout
        models.resolve("huabu-tiny-absent")
    assert models.resolve(None).kind == "builtin"  # the default model
    assert models.resolve("tiny-sd").location == str(model_store["folder"])
    assert models.resolve(f"tiny-sd [{'ab' * 5}]").location == str(model_store["folder"])  # A1111 title
    assert models.resolve(str(model_store["single"])).kind == "single-file"
    assert models.resolve("someone/some-model").kind == "hub"
    names = [ref.name for ref in models.list_models()]
    assert names == ["huabu-tiny", "huabu-tiny-dit", "tiny-inpaint", "tiny-sd"]  # files inside folders are not models
    short = models.model_sha256(models.resolve("tiny-sd"))[:10]
    assert models.find_by_hash(short).name == "tiny-sd"


def test_a_model_reads_chinese_when_its_tokenizer_keeps_characters_whole(settings, model_store, tmp_path):
    models = ModelManager(settings)
    assert not models.reads_chinese("huabu-tiny")  # CLIP's BPE: byte pieces
    assert not models.reads_chinese(str(model_store["single"]))  # a single file: SD's CLIP
    assert models.reads_chinese(str(chinese_reading_folder(tmp_path)))


@pytest.mark.parametrize("spec, message", [
    ("/no/such/model.safetensors", r"^model file or folder not found: /no/such/model\.safetensors$"),
    ("nosuchmodel", r"^no model named 'nosuchmodel': not the built-in"),
    ("stabilityai/sd-turbo", r"^model 'stabilityai/sd-turbo' is not a local path and the hub is offline "
                             r"\(HF_HUB_OFFLINE=1\); download it first or pass a folder$"),
])
def test_bad_specs_fail_with_one_line(settings, spec, message):
    with pytest.raises(ModelNotFound, match=message):
        ModelManager(settings).load(spec)


def test_folder_without_model_index_is_refused(settings, tmp_path):
    with pytest.raises(ModelNotFound, match="has no model_index.json"):
        ModelManager(settings).load(str(tmp_path))


def test_builtin_without_weights_says_so(settings, monkeypatch, tmp_path):
    monkeypatch.setattr("huabu.engine.models.BUILTIN_DIR", tmp_path / "stripped")  # e.g. a checkout without weights
    with pytest.raises(ModelNotFound, match="^built-in model huabu-tiny has no weights in this checkout yet$"):
        ModelManager(settings).load("huabu-tiny")


@pytest.mark.parametrize("layers, down, up", [
    (1, ("DownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D")),
    (2, ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
     ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
])
def test_unet_conversion_round_trips_for_any_block_count(layers, down, up):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = UNet2DConditionModel(block_out_channels=(32, 64, 64)[:len(down)], layers_per_block=layers,
                                down_block_types=down, up_block_types=up, cross_attention_dim=32,
                                attention_head_dim=2, norm_num_groups=16, sample_size=8)
    state = unet.state_dict()
    ldm = {"model.diffusion_model." + k: v for k, v in unet_to_ldm(state, unet.config).items()}
    back = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_vae_conversion_round_trips_for_three_blocks():
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae = AutoencoderKL(block_out_channels=[16, 32, 32], down_block_types=["DownEncoderBlock2D"] * 3,
                        up_block_types=["UpDecoderBlock2D"] * 3, norm_num_groups=8, latent_channels=4)
    state = vae.state_dict()
    ldm = {"first_stage_model." + k: v for k, v in vae_to_ldm(state, vae.config).items()}
    assert ldm["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 convs, as in LDM files
    back = convert_ldm_vae_checkpoint(ldm, dict(vae.config))
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


# Parameter counts of the released models (diffusers configs), checked on the meta device: no memory used.
@pytest.mark.parametrize("name, unet_params, text_params", [
    ("sd15", 859_520_964, 123_060_480),
    ("sd2-v", 865_910_724, 340_387_840),
    ("sdxl", 2_567_463_684, 123_060_480),
])
def test_bundled_configs_describe_the_released_models(name, unet_params, text_params):
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = bundled_configs()[name]
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    assert sum(p.numel() for p in unet.parameters()) == unet_params
    assert sum(p.numel() for p in text.parameters()) == text_params
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ("StableDiffusionXLPipeline" if name == "sdxl" else "StableDiffusionPipeline")


def test_single_file_kind_is_detected_from_the_keys(tmp_path):
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    from huabu.engine.single_file import config_for

    v1_key = "model.diffusion_model.output_blocks.11.0.skip_connection.weight"
    v2_key = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
    state = {v1_key: torch.zeros(1), v2_key: torch.zeros(320, 1024)}
    assert infer_diffusers_model_type(state) == "v2"
    path = tmp_path / "model.safetensors"
    assert config_for(path, state, {}, None)[1] == "sd2-v"
    path.with_suffix(".yaml").write_text("model:\n  params:\n    parameterization: eps\n")
    assert config_for(path, state, {}, None)[1] == "sd2-base"
    assert config_for(path, {v1_key: torch.zeros(1)}, {}, None)[1] == "sd15"
    assert config_for(path, {}, {"huabu_config": "huabu-tiny"}, None)[0] == BUILTIN_DIR
