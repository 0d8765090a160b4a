"""Tiny random video components for the video tests: a MotionAdapter that fits conftest's tiny SD UNet, ModelScope
and I2VGen-XL pipelines (sizes after diffusers' own fast tests, with huabu-tiny's real CLIP tokenizer) and a
SparseCtrl RGB model."""

from __future__ import annotations

from pathlib import Path

from conftest import TOKENIZER_DIR


def tiny_motion_adapter(seed: int = 0, heads: int = 2, max_frames: int = 8):
    """Fits conftest.build_tiny_pipeline's UNet: channels (32, 64), one layer per block."""
    import torch
    from diffusers import MotionAdapter

    torch.manual_seed(seed)
    return MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_norm_num_groups=16,
                         motion_num_attention_heads=heads, motion_max_seq_length=max_frames)


def _text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, vocab_size=49408,
                                        hidden_size=8, intermediate_size=16, num_attention_heads=2,
                                        num_hidden_layers=2, projection_dim=8))


def _parts():
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTokenizer

    vae = AutoencoderKL(block_out_channels=(8, 8), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        sample_size=32, norm_num_groups=2)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False)
    return {"vae": vae, "text_encoder": _text_encoder(), "tokenizer": CLIPTokenizer.from_pretrained(TOKENIZER_DIR),
            "scheduler": scheduler}


def _unet3d_kwargs() -> dict:
    return dict(block_out_channels=(8, 8), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
                down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), cross_attention_dim=8, attention_head_dim=4,
                norm_num_groups=2)


def save_modelscope(path: Path, seed: int = 0) -> Path:
    import torch
    from diffusers import TextToVideoSDPipeline, UNet3DConditionModel

    torch.manual_seed(seed)
    TextToVideoSDPipeline(unet=UNet3DConditionModel(**_unet3d_kwargs()), **_parts()).save_pretrained(path)
    return path


def save_i2vgen_xl(path: Path, seed: int = 0) -> Path:
    import torch
    from diffusers import I2VGenXLPipeline
    from diffusers.models.unets import I2VGenXLUNet
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet = I2VGenXLUNet(**_unet3d_kwargs(), num_attention_heads=None)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=8, projection_dim=8, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        intermediate_size=16, patch_size=4))
    I2VGenXLPipeline(
        unet=unet, image_encoder=image_encoder, feature_extractor=CLIPImageProcessor(crop_size=32, size=32), **_parts()
    ).save_pretrained(path)
    return path


def save_sparsectrl(path: Path, seed: int = 0) -> Path:
    """A SparseCtrl RGB model for conftest's tiny SD (its VAE factor 4: a 3-stage conditioning embedding)."""
    import torch
    from diffusers import SparseControlNetModel

    torch.manual_seed(seed)
    model = SparseControlNetModel(
        block_out_channels=(32, 64), layers_per_block=1, in_channels=4, conditioning_channels=3,
        down_block_types=("DownBlockMotion", "CrossAttnDownBlockMotion"), cross_attention_dim=32, attention_head_dim=2,
        conditioning_embedding_out_channels=(8, 16, 16), norm_num_groups=16, motion_num_attention_heads=2,
        motion_max_seq_length=8, use_simplified_condition_embedding=False)
    # A new ControlNet's output convolutions are zero (it starts without effect); give them weights so it acts.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
                param.normal_(0.0, 0.2)
    model.save_pretrained(path)
    return path


def save_tiny_lora(pipe, path: Path, seed: int = 0, rank: int = 2) -> Path:
    """A kohya-format LoRA for conftest's tiny SD: every attention projection of the UNet's transformer blocks and
    of the text encoder's self-attention, with random weights big enough to change the image."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    state = {}
    targets = (("lora_unet_", pipe.unet, lambda n: "transformer_blocks" in n and ".attn" in n),
               ("lora_te_text_model_", pipe.text_encoder, lambda n: "self_attn." in n))
    for prefix, model, wanted in targets:
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and wanted(name):
                key = prefix + name.replace(".", "_")
                state[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=g) * 0.5
                state[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=g) * 0.5
                state[f"{key}.alpha"] = torch.tensor(float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"ss_network_module": "networks.lora"})
    return path
