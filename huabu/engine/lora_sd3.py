"""kohya / sd-scripts SD3 LoRA keys -> the PEFT keys diffusers' SD3 loader takes.

diffusers converts kohya's FLUX LoRAs on load but has no converter for SD3's (`lora_unet_joint_blocks_0_x_block_attn
_qkv.lora_down.weight`: the MMDiT reference names with `_`), so it would load nothing from them. The names come from
`huabu.engine.convert`'s SD3 tables, read backwards; a fused `qkv` LoRA becomes three LoRAs sharing its down matrix,
and alpha / rank is folded into the up matrices (PEFT keys carry no alpha).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import torch

from huabu.core.errors import InvalidRequest
from huabu.engine.convert import SD3_BLOCK_NAMES, SD3_FIXED_NAMES, SD3_FUSED_QKV, swap_halves

log = logging.getLogger(__name__)

KOHYA_SD3_MARK = "lora_unet_joint_blocks_"
_BLOCK = re.compile(r"^lora_unet_joint_blocks_(\d+)_")


def is_kohya_sd3(keys) -> bool:
    return any(key.startswith(KOHYA_SD3_MARK) for key in keys)


def _kohya(reference: str) -> str:
    return "lora_unet_" + reference.replace(".", "_")


def _targets(blocks: int) -> dict[str, tuple[list[str], bool]]:
    """kohya module name -> (diffusers modules, whether its output halves are swapped)."""
    targets = {_kohya(ref): ([name], False) for name, ref in SD3_FIXED_NAMES.items()}
    targets[_kohya("final_layer.adaLN_modulation.1")] = (["norm_out.linear"], True)
    for block in range(blocks):
        for name, ref in SD3_BLOCK_NAMES.items():
            swapped = block == blocks - 1 and name == "norm1_context.linear"  # the last block's continuous norm
            targets[_kohya(f"joint_blocks.{block}.{ref}")] = ([f"transformer_blocks.{block}.{name}"], swapped)
        for fused, parts in SD3_FUSED_QKV.items():
            targets[_kohya(f"joint_blocks.{block}.{fused}")] = (
                [f"transformer_blocks.{block}.{part}" for part in parts], False)
    return targets


def sd3_lora_from_kohya(state: Mapping[str, torch.Tensor], blocks: int, name: str = "LoRA") -> dict[str, torch.Tensor]:
    """A kohya SD3 LoRA's MMDiT layers as diffusers' `transformer.<module>.lora_A/lora_B.weight` keys, for a
    transformer of `blocks` joint blocks. Text-encoder layers (`lora_te1_` ...) are left out with a warning."""
    targets = _targets(blocks)
    modules = sorted({key.split(".", 1)[0] for key in state if key.endswith(".lora_down.weight")})
    left_out = sorted({key.split("_")[1] for key in state if key.startswith("lora_te")})
    if left_out:
        log.warning("%s: its text-encoder layers (%s) are left out; only its MMDiT layers are read",
                    name, ", ".join(left_out))
    out: dict[str, torch.Tensor] = {}
    for module in modules:
        if module.startswith("lora_te"):
            continue
        if module not in targets:
            block = _BLOCK.match(module)
            where = f" (block {block[1]}, the model has {blocks})" if block and int(block[1]) >= blocks else ""
            raise InvalidRequest(f"{name}: kohya SD3 layer {module!r} has no counterpart in this transformer{where}")
        down, up = state[f"{module}.lora_down.weight"].float(), state[f"{module}.lora_up.weight"].float()
        alpha = state.get(f"{module}.alpha")
        up = up * (float(alpha) / down.shape[0] if alpha is not None else 1.0)
        names, swapped = targets[module]
        ups = up.chunk(len(names), dim=0) if len(names) > 1 else [swap_halves(up) if swapped else up]
        for target, part in zip(names, ups, strict=True):
            out[f"transformer.{target}.lora_A.weight"] = down
            out[f"transformer.{target}.lora_B.weight"] = part.contiguous()
    return out
