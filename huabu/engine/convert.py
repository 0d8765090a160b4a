"""diffusers -> original LDM ("single file") key conversion for SD-1.x-shaped pipelines.

diffusers converts single-file checkpoints into diffusers models (`from_single_file`) but has no way back, which
A1111/ComfyUI users need and which our tests use to build an LDM-key fixture. The layout mirrors diffusers' own
LDM -> diffusers mapping (loaders/single_file_utils.py) in reverse, computed from the model configs so any number
of UNet / VAE blocks works (huabu-tiny has three of each).
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

# diffusers ResnetBlock2D names -> LDM ResBlock names (UNet).
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
# diffusers VAE mid-block attention names -> LDM AttnBlock names.
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_first(rest: str, table: Mapping[str, str]) -> str:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


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
    """CLIPTextModel weights -> `transformer.text_model.*` keys (transformers 5 drops the `text_model.` level)."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith("position_ids"):
            continue
        out[key if key.startswith("text_model.") else f"text_model.{key}"] = value
    return out


def pipeline_to_ldm(pipe) -> dict[str, Any]:
    """All weights of an SD-1.x/2-style pipeline with a CLIPTextModel, as one LDM-key state dict."""
    from transformers import CLIPTextModel

    if getattr(pipe, "text_encoder_2", None) is not None or not isinstance(pipe.text_encoder, CLIPTextModel):
        raise ValueError("only pipelines with a single CLIPTextModel text encoder (SD 1.x layout) can be exported")
    state: dict[str, Any] = {}
    for prefix, part in ((UNET_PREFIX, unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config)),
                         (VAE_PREFIX, vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config)),
                         (CLIP_PREFIX, clip_text_to_ldm(pipe.text_encoder.state_dict()))):
        state.update({prefix + k: v for k, v in part.items()})
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

        pipe = DiffusionPipeline.from_pretrained(pipe_or_folder, safety_checker=None, local_files_only=True)
    state = pipeline_to_ldm(pipe)
    state = {k: (v.to(dtype) if dtype is not None else v).detach().contiguous().cpu() for k, v in state.items()}
    metadata = {"format": "pt"}
    if config_name:
        metadata["huabu_config"] = config_name
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path
