"""diffusers -> original ("single file") key conversion for SD-1.x-shaped and SD3 pipelines.

diffusers converts single-file checkpoints into diffusers models (`from_single_file`) but has no way back, which
A1111/ComfyUI users need and which our tests use to build single-file fixtures. The layout mirrors diffusers' own
mapping (loaders/single_file_utils.py) in reverse, computed from the model configs so any number of UNet / VAE
blocks works (huabu-tiny has three of each).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huabu.core.atomic import atomic_path

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
# SD3's reference files (and ComfyUI's) keep the three text encoders under these prefixes.
SD3_TEXT_PREFIXES = {"text_encoder": "text_encoders.clip_l.transformer.",
                     "text_encoder_2": "text_encoders.clip_g.transformer.",
                     "text_encoder_3": "text_encoders.t5xxl.transformer."}

# diffusers ResnetBlock2D names -> LDM ResBlock names (UNet).
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
# diffusers VAE mid-block attention names -> LDM AttnBlock names.
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _renamed(rest: str, table: Mapping[str, str]) -> str | None:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return None


def _rename_first(rest: str, table: Mapping[str, str]) -> str:
    return _renamed(rest, table) or rest


def _layers_per_block(config: Mapping[str, Any]) -> int:
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise ValueError("per-block layers_per_block lists have no LDM layout; only an int is supported")
    return layers


def unet_to_ldm(state_dict: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """UNet2DConditionModel weights -> LDM `openaimodel.UNetModel` keys (without the model prefix)."""
    layers = _layers_per_block(config)
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "class_embedding.linear_1": "label_emb.0.0", "class_embedding.linear_2": "label_emb.0.2"}
    up_has_attention = {
        int(key.split(".")[1]) for key in state_dict if key.startswith("up_blocks.") and ".attentions." in key
    }
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "down_blocks":
            block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "resnets":
                new = f"input_blocks.{1 + block * (layers + 1) + index}.0.{_rename_first(rest, _UNET_RESNET)}"
            elif kind == "attentions":
                new = f"input_blocks.{1 + block * (layers + 1) + index}.1.{rest}"
            else:  # downsamplers.0.conv.*
                new = f"input_blocks.{1 + block * (layers + 1) + layers}.0.op.{rest.split('.', 1)[1]}"
        elif parts[0] == "mid_block":
            kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            if kind == "resnets":
                new = f"middle_block.{2 * index}.{_rename_first(rest, _UNET_RESNET)}"
            else:
                new = f"middle_block.1.{rest}"
        elif parts[0] == "up_blocks":
            block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            base = block * (layers + 1)
            if kind == "resnets":
                new = f"output_blocks.{base + index}.0.{_rename_first(rest, _UNET_RESNET)}"
            elif kind == "attentions":
                new = f"output_blocks.{base + index}.1.{rest}"
            else:  # upsamplers.0.conv.*: after the last layer, behind its attention when the block has one
                slot = 2 if block in up_has_attention else 1
                new = f"output_blocks.{base + layers}.{slot}.conv.{rest.split('.', 1)[1]}"
        else:
            new = _rename_first(key, fixed)
            if new == key:
                raise ValueError(f"UNet weight {key!r} has no LDM counterpart")
        out[new] = value
    return out


def vae_to_ldm(state_dict: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """AutoencoderKL weights -> LDM `autoencoder.AutoencoderKL` keys (without the model prefix)."""
    n_up = len(config["up_block_types"])
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        coder = parts[0]
        if coder in ("encoder", "decoder") and parts[1] in ("down_blocks", "up_blocks"):
            block, kind = int(parts[2]), parts[3]
            level = block if coder == "encoder" else n_up - 1 - block  # LDM numbers decoder levels bottom-up
            name = "down" if coder == "encoder" else "up"
            if kind == "resnets":
                rest = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
                new = f"{coder}.{name}.{level}.block.{parts[4]}.{rest}"
            else:  # downsamplers.0.conv.* / upsamplers.0.conv.*
                sampler = "downsample" if coder == "encoder" else "upsample"
                new = f"{coder}.{name}.{level}.{sampler}.{'.'.join(parts[5:])}"
        elif coder in ("encoder", "decoder") and parts[1] == "mid_block":
            kind, index, rest = parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "resnets":
                new = f"{coder}.mid.block_{index + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
            else:
                new = f"{coder}.mid.attn_1.{_rename_first(rest, _VAE_ATTENTION)}"
                if value.ndim == 2:  # LDM keeps these projections as 1x1 convolutions
                    value = value[:, :, None, None]
        elif coder in ("encoder", "decoder"):
            new = key.replace("conv_norm_out", "norm_out")
        else:  # quant_conv, post_quant_conv
            new = key
        out[new] = value
    return out


def clip_text_to_ldm(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """CLIPTextModel(WithProjection) weights -> `text_model.*` keys, as in LDM and SD3 files (transformers >= 5.6
    drops CLIPTextModel's `text_model.` level); a projection stays `text_projection.*`."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith("position_ids"):
            continue
        out[key if key.startswith(("text_model.", "text_projection.")) else f"text_model.{key}"] = value
    return out


def swap_halves(value):
    """SD3's reference AdaLN-continuous layers emit (shift, scale); diffusers' emit (scale, shift)."""
    import torch

    first, second = value.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


# SD3Transformer2DModel names -> MMDiT reference names, for weights that map one to one.
SD3_FIXED_NAMES = {"pos_embed.pos_embed": "pos_embed", "pos_embed.proj": "x_embedder.proj",
                   "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
                   "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
                   "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
                   "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
                   "context_embedder": "context_embedder", "proj_out": "final_layer.linear"}
SD3_BLOCK_NAMES = {"attn.to_out.0": "x_block.attn.proj", "attn.to_add_out": "context_block.attn.proj",
                   "attn.norm_q": "x_block.attn.ln_q", "attn.norm_k": "x_block.attn.ln_k",
                   "attn.norm_added_q": "context_block.attn.ln_q", "attn.norm_added_k": "context_block.attn.ln_k",
                   "attn2.to_out.0": "x_block.attn2.proj", "attn2.norm_q": "x_block.attn2.ln_q",
                   "attn2.norm_k": "x_block.attn2.ln_k", "norm1.linear": "x_block.adaLN_modulation.1",
                   "norm1_context.linear": "context_block.adaLN_modulation.1",
                   "ff.net.0.proj": "x_block.mlp.fc1", "ff.net.2": "x_block.mlp.fc2",
                   "ff_context.net.0.proj": "context_block.mlp.fc1", "ff_context.net.2": "context_block.mlp.fc2"}
# Separate q / k / v projections that the reference code keeps as one `qkv` matrix.
SD3_FUSED_QKV = {"x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
                 "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
                 "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v")}
_SD3_QKV_PARTS = {name for names in SD3_FUSED_QKV.values() for name in names}


def sd3_transformer_to_ldm(state_dict: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """SD3Transformer2DModel weights -> MMDiT reference keys (`joint_blocks.N.x_block...`, without the model prefix)."""
    import torch

    last = config["num_layers"] - 1
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        if key.startswith("transformer_blocks."):
            continue
        if key.startswith("norm_out.linear."):
            out[f"final_layer.adaLN_modulation.1.{key.rsplit('.', 1)[1]}"] = swap_halves(value)
            continue
        new = _renamed(key, SD3_FIXED_NAMES)
        if new is None:
            raise ValueError(f"SD3 transformer weight {key!r} has no reference counterpart")
        out[new] = value
    for block in range(config["num_layers"]):
        prefix = f"transformer_blocks.{block}."
        for fused, (q, k, v) in SD3_FUSED_QKV.items():
            for kind in ("weight", "bias"):
                if f"{prefix}{q}.{kind}" in state_dict:
                    out[f"joint_blocks.{block}.{fused}.{kind}"] = torch.cat(
                        [state_dict[f"{prefix}{name}.{kind}"] for name in (q, k, v)], dim=0)
        for key, value in state_dict.items():
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix):]
            new = _renamed(rest, SD3_BLOCK_NAMES)
            if new is None:
                if rest.rsplit(".", 1)[0] in _SD3_QKV_PARTS:
                    continue
                raise ValueError(f"SD3 transformer weight {key!r} has no reference counterpart")
            if block == last and rest.startswith("norm1_context."):  # the last block's context norm is continuous
                value = swap_halves(value)
            out[f"joint_blocks.{block}.{new}"] = value
    return out


def pipeline_to_ldm(pipe) -> dict[str, Any]:
    """All weights of a pipeline as one single-file state dict: SD-1.x/2 style (one CLIPTextModel) in LDM keys, or
    SD3 in the reference layout (MMDiT, VAE, CLIP-L/G and T5 when present)."""
    from transformers import CLIPTextModel

    if type(pipe).__name__.startswith("StableDiffusion3"):
        return _sd3_pipeline_to_ldm(pipe)
    if getattr(pipe, "text_encoder_2", None) is not None or not isinstance(pipe.text_encoder, CLIPTextModel):
        raise ValueError("only pipelines with a single CLIPTextModel text encoder (SD 1.x layout) can be exported")
    state: dict[str, Any] = {}
    for prefix, part in ((UNET_PREFIX, unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config)),
                         (VAE_PREFIX, vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config)),
                         (CLIP_PREFIX, clip_text_to_ldm(pipe.text_encoder.state_dict()))):
        state.update({prefix + k: v for k, v in part.items()})
    return state


def _sd3_pipeline_to_ldm(pipe) -> dict[str, Any]:
    state = {UNET_PREFIX + k: v for k, v in sd3_transformer_to_ldm(pipe.transformer.state_dict(),
                                                                   pipe.transformer.config).items()}
    state.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config).items()})
    for name, prefix in SD3_TEXT_PREFIXES.items():
        encoder = getattr(pipe, name, None)
        if encoder is None:
            continue
        weights = encoder.state_dict() if name == "text_encoder_3" else clip_text_to_ldm(encoder.state_dict())
        state.update({prefix + k: v for k, v in weights.items()})
    return state


def export_single_file(pipe_or_folder, path: str | os.PathLike, config_name: str | None = None,
                       dtype=None) -> Path:
    """Write a pipeline (object or diffusers folder) as one LDM-key .safetensors file, atomically.

    `config_name` (e.g. "huabu-tiny") is stored in the file's metadata as `huabu_config`, naming the bundled config
    huabu loads it with, so the file works offline without a config argument.
    """
    from safetensors.torch import save_file

    pipe = pipe_or_folder
    if isinstance(pipe_or_folder, (str, os.PathLike)):
        from diffusers import DiffusionPipeline

        from huabu.engine.models import folder_load_kwargs

        pipe = DiffusionPipeline.from_pretrained(pipe_or_folder, local_files_only=True,
                                                 **folder_load_kwargs(Path(pipe_or_folder)))
    state = pipeline_to_ldm(pipe)
    state = {k: (v.to(dtype) if dtype is not None else v).detach().contiguous().cpu() for k, v in state.items()}
    seen: set[int] = set()
    for key, value in state.items():  # tied weights (T5's shared embedding) are written once per key, as readers expect
        if value.data_ptr() in seen:
            state[key] = value.clone()
        seen.add(value.data_ptr())
    metadata = {"format": "pt"}
    if config_name:
        metadata["huabu_config"] = config_name
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path
