"""ControlNet weights between diffusers and the original ("single file") layout that sd-webui-controlnet, ComfyUI
and lllyasviel's releases use: `control_model.` + the UNet encoder's LDM keys, `zero_convs.N.0`,
`middle_block_out.0` and the `input_hint_block` Sequential (conv, SiLU, conv, ... so convolutions sit at even
indices and the last one is the zero convolution into the UNet's width).

diffusers reads this layout (`ControlNetModel.from_single_file`) but cannot write it, and its reader places the
hint block's last convolution at index 14, as SD's 8x-downsampling embedding has it. huabu-tiny's 4x embedding
ends at index 10, so `for_diffusers_reader` renumbers that one convolution before diffusers reads the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huabu.core.atomic import atomic_path
from huabu.engine.convert import unet_to_ldm

PREFIX = "control_model."
_HINT = re.compile(r"^((?:control_model\.)?input_hint_block)\.(\d+)\.(weight|bias)$")
_DIFFUSERS_READER_LAST_HINT = 14  # where diffusers' converter looks for the hint block's final convolution


def controlnet_to_ldm(state_dict: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """ControlNetModel weights -> original keys (with the `control_model.` prefix)."""
    hint_blocks = len(config["conditioning_embedding_out_channels"]) * 2 - 2
    encoder, out = {}, {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "controlnet_down_blocks":
            out[f"zero_convs.{parts[1]}.0.{parts[2]}"] = value
        elif parts[0] == "controlnet_mid_block":
            out[f"middle_block_out.0.{parts[1]}"] = value
        elif parts[0] == "controlnet_cond_embedding":
            if parts[1] == "conv_in":
                index = 0
            elif parts[1] == "blocks":
                index = 2 * (int(parts[2]) + 1)
            else:  # conv_out
                index = 2 * (hint_blocks + 1)
            out[f"input_hint_block.{index}.{parts[-1]}"] = value
        else:
            encoder[key] = value
    out.update(unet_to_ldm(encoder, config))
    return {PREFIX + key: value for key, value in out.items()}


def for_diffusers_reader(state: dict[str, Any]) -> dict[str, Any]:
    """Renumber a short hint block's final convolution to index 14, where diffusers' converter expects it (see the
    module docstring). Diffusers-keyed files and SD-sized hint blocks pass through unchanged."""
    indices: dict[int, str] = {}
    for key in state:
        match = _HINT.match(key)
        if match:
            indices[int(match.group(2))] = match.group(1)
    if not indices:
        return state
    last = max(indices)
    if last == _DIFFUSERS_READER_LAST_HINT:
        return state
    if last > _DIFFUSERS_READER_LAST_HINT:
        raise ValueError(f"its control-image embedding has {last // 2 - 1} convolutions; diffusers reads at most 6 "
                         f"from a single file (convert it to a diffusers folder)")
    renamed = {}
    for key, value in state.items():
        match = _HINT.match(key)
        if match and int(match.group(2)) == last:
            key = f"{match.group(1)}.{_DIFFUSERS_READER_LAST_HINT}.{match.group(3)}"
        renamed[key] = value
    return renamed


def conditioning_channels_of(state: Mapping[str, Any]) -> tuple[int, tuple[int, ...]]:
    """(input channels, conditioning_embedding_out_channels) of a ControlNet state dict in either layout."""
    diffusers_in = state.get("controlnet_cond_embedding.conv_in.weight")
    if diffusers_in is not None:
        strided = sorted(int(k.split(".")[2]) for k in state
                         if k.startswith("controlnet_cond_embedding.blocks.") and k.endswith(".weight"))
        outs = [state[f"controlnet_cond_embedding.blocks.{i}.weight"].shape[0] for i in strided if i % 2 == 1]
        return int(diffusers_in.shape[1]), (int(diffusers_in.shape[0]), *map(int, outs))
    convs = {}
    for key, value in state.items():
        match = _HINT.match(key)
        if match and match.group(3) == "weight":
            convs[int(match.group(2))] = value
    if 0 not in convs:
        raise ValueError("it holds no control-image embedding (input_hint_block / controlnet_cond_embedding)")
    ordered = [convs[i] for i in sorted(convs)][:-1]  # the last one is the zero convolution into the UNet
    outs = [int(w.shape[0]) for w in ordered[2::2]]  # the stride-2 convolution of each (conv, strided conv) pair
    return int(ordered[0].shape[1]), (int(ordered[0].shape[0]), *outs)


def export_controlnet(controlnet_or_folder, path: str | os.PathLike, dtype=None) -> Path:
    """Write a ControlNetModel (object or diffusers folder) as one original-layout .safetensors file, atomically."""
    from safetensors.torch import save_file

    controlnet = controlnet_or_folder
    if isinstance(controlnet_or_folder, (str, os.PathLike)):
        from diffusers import ControlNetModel

        controlnet = ControlNetModel.from_pretrained(controlnet_or_folder, local_files_only=True)
    state = controlnet_to_ldm(controlnet.state_dict(), controlnet.config)
    state = {k: (v.to(dtype) if dtype is not None else v).detach().contiguous().cpu() for k, v in state.items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    return path
