"""Shared fixtures: tiny random SD-shaped models built once per session (diffusers folder, LDM-key single file,
9-channel inpaint variant, pickle checkpoints) and a huabu home holding them, all offline."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# The test suite never reaches the hub; huggingface_hub reads this when first imported.
os.environ["HF_HUB_OFFLINE"] = "1"
# Tiny models gain nothing from a thread pool, and on a busy 2-core machine OpenMP threads spinning against
# other processes made generations 10-100x slower (measured). Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import pytest

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "huabu" / "tiny" / "huabu-tiny" / "tokenizer"


def build_tiny_pipeline(in_channels: int = 4, vae_blocks: int = 3, seed: int = 0):
    """A random StableDiffusionPipeline (or inpaint pipeline for 9 channels) small enough for 2 CPU cores: UNet
    (32, 64) with cross-attention 32, a CLIPTextModel of width 32 with the real CLIP tokenizer, and an
    AutoencoderKL with `vae_blocks` blocks (VAE factor 2 ** (vae_blocks - 1))."""
    import torch
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=in_channels, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=16)
    channels = [16, 32, 32, 32][:vae_blocks]
    vae = AutoencoderKL(block_out_channels=channels, in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * vae_blocks,
                        up_block_types=["UpDecoderBlock2D"] * vae_blocks, norm_num_groups=8, sample_size=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, vocab_size=49408, hidden_size=32,
        intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, projection_dim=32, layer_norm_eps=1e-5))
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    cls = StableDiffusionInpaintPipeline if in_channels == 9 else StableDiffusionPipeline
    return cls(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
               safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def build_tiny_sdxl_pipeline(seed: int = 3):
    """A random StableDiffusionXLPipeline: two width-32 text encoders (one with projection), text_time embeddings."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, norm_num_groups=16,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=80, cross_attention_dim=64)
    vae = AutoencoderKL(block_out_channels=[16, 32, 32], down_block_types=["DownEncoderBlock2D"] * 3,
                        up_block_types=["UpDecoderBlock2D"] * 3, latent_channels=4, norm_num_groups=8)
    config = CLIPTextConfig(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, vocab_size=49408,
                            hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                            projection_dim=32)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(vae=vae, text_encoder=CLIPTextModel(config),
                                     text_encoder_2=CLIPTextModelWithProjection(config), tokenizer=tokenizer,
                                     tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> dict[str, Path]:
    """Paths of the session's tiny models: "folder" (diffusers, in the models dir as `tiny-sd`), "single" (its
    LDM-key .safetensors export, outside the models dir), "inpaint" (9-channel UNet folder in the models dir),
    "f8" (a folder with an SD-like VAE factor of 8), "sdxl" (an SDXL-shaped folder), "ckpt" (pickle),
    "fake_safetensors" (a pickle named .SAFETENSORS), "home" (HUABU_HOME with these)."""
    import torch

    from huabu.engine.convert import export_single_file, pipeline_to_ldm

    home = tmp_path_factory.mktemp("huabu-home")
    models = home / "models"
    pipe = build_tiny_pipeline()
    pipe.save_pretrained(models / "tiny-sd")
    single = export_single_file(pipe, home / "elsewhere" / "tiny-single.safetensors")
    build_tiny_pipeline(in_channels=9, seed=1).save_pretrained(models / "tiny-inpaint")
    build_tiny_pipeline(vae_blocks=4, seed=2).save_pretrained(home / "elsewhere" / "tiny-f8")
    build_tiny_sdxl_pipeline().save_pretrained(home / "elsewhere" / "tiny-sdxl")
    unsafe = home / "unsafe"
    unsafe.mkdir()
    torch.save({"state_dict": pipeline_to_ldm(pipe)}, unsafe / "tiny.ckpt")
    shutil.copy(unsafe / "tiny.ckpt", unsafe / "renamed.SAFETENSORS")
    return {"home": home, "folder": models / "tiny-sd", "single": single, "inpaint": models / "tiny-inpaint",
            "f8": home / "elsewhere" / "tiny-f8", "sdxl": home / "elsewhere" / "tiny-sdxl",
            "ckpt": unsafe / "tiny.ckpt", "fake_safetensors": unsafe / "renamed.SAFETENSORS"}


@pytest.fixture(scope="session")
def settings(model_store, tmp_path_factory):
    from huabu.core.settings import Settings

    home = model_store["home"]
    return Settings.for_home(home, outputs_dir=tmp_path_factory.mktemp("outputs"), model_cache_size=4,
                             device="cpu", dtype="fp32", hub_offline=True)


@pytest.fixture(scope="session")
def engine(settings):
    """One Engine for the session so the tiny models load once."""
    from huabu.engine.generate import Engine

    return Engine(settings)


@pytest.fixture
def huabu_env(model_store, monkeypatch, tmp_path):
    """Environment for in-process CLI runs: HUABU_HOME = the session home (models), a fresh gallery per test."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(model_store["home"] / "models")
    monkeypatch.setenv("HUABU_HOME", str(home))
    monkeypatch.setenv("HUABU_DEVICE", "cpu")
    return home


def build_tiny_controlnet(unet, seed: int = 0, embedding: tuple[int, ...] = (16, 32, 64)):
    """ControlNetModel.from_unet of a tiny UNet (`embedding` channels: 3 = 4x, the tiny VAE's factor), with random
    rather than zero output convolutions so that it visibly steers from the first step."""
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=embedding)
    with torch.no_grad():
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]:
            conv.weight.normal_(0.0, 0.3)
    return net


@pytest.fixture(scope="session")
def controlnet_store(model_store) -> dict[str, Path]:
    """Tiny ControlNets for the `tiny-sd` model in the session home's ControlNet folder: "canny" (diffusers folder
    tiny-canny) and "color" (original-layout single file tiny-color.safetensors); outside it "sdxl" (a folder for the
    SDXL-shaped model) and "f8" (a folder whose control embedding shrinks 8x, which fits no tiny model)."""
    from diffusers import UNet2DConditionModel

    from huabu.engine.control.convert import export_controlnet

    home = model_store["home"]
    unet = UNet2DConditionModel.from_pretrained(model_store["folder"] / "unet")
    build_tiny_controlnet(unet, seed=10).save_pretrained(home / "controlnet" / "tiny-canny")
    export_controlnet(build_tiny_controlnet(unet, seed=11), home / "controlnet" / "tiny-color.safetensors")
    sdxl_unet = UNet2DConditionModel.from_pretrained(model_store["sdxl"] / "unet")
    build_tiny_controlnet(sdxl_unet, seed=12).save_pretrained(home / "elsewhere" / "tiny-sdxl-canny")
    build_tiny_controlnet(unet, seed=13, embedding=(16, 32, 64, 64)).save_pretrained(home / "elsewhere" / "tiny-cn-f8")
    return {"canny": home / "controlnet" / "tiny-canny", "color": home / "controlnet" / "tiny-color.safetensors",
            "sdxl": home / "elsewhere" / "tiny-sdxl-canny", "f8": home / "elsewhere" / "tiny-cn-f8"}
