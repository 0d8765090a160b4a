"""LoRA files in the two key layouts people share, the metadata kohya tools and A1111 read, and A1111's LoRA hash.

In memory a LoRA is `Layers`: module path -> LoraLayer(down, up, alpha), the path starting with the component
("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "text_encoder.encoder.layers.0.self_attn.q_proj";
text-encoder paths as transformers 5 names the modules, without `text_model.`). A layer adds
`up @ down * alpha / rank` to the weight of its module.

- kohya / A1111 keys (sd-scripts' networks.lora): `lora_unet_<path with _>.lora_down.weight`, `.lora_up.weight`,
  `.alpha`; text encoders `lora_te_text_model_...` (`lora_te1_` / `lora_te2_` with two encoders).
- diffusers / peft keys: `unet.<path>.lora_A.weight`, `.lora_B.weight`, `text_encoder.text_model.<path>...`, with
  ranks and alphas as peft LoraConfig fields in the `lora_adapter_metadata` JSON, as diffusers' save_lora_weights
  writes them.

The key mapping is hand-written (diffusers converts kohya keys only one way, on load): kohya joins module names
with `_`, so turning a key back into a module path needs to know which names contain an underscore.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from huabu.core.atomic import atomic_path
from huabu.core.errors import InvalidRequest, ModelNotFound

KOHYA = "kohya"
DIFFUSERS = "diffusers"
FORMATS = (KOHYA, DIFFUSERS)
NETWORK_MODULE = "networks.lora"  # what sd-scripts writes as ss_network_module for plain LoRA
ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers' key for peft LoraConfig fields
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")

# Module names of SD UNets and CLIP text encoders that contain "_" (kohya keys cannot tell them from separators).
_COMPOUNDS = {tuple(name.split("_")) for name in (
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out", "proj_in",
    "proj_out", "conv_in", "conv_out", "conv_shortcut", "conv_norm_out", "time_emb_proj", "time_embedding",
    "linear_1", "linear_2", "add_embedding", "time_proj", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj",
    "layer_norm1", "layer_norm2", "final_layer_norm", "token_embedding", "position_embedding", "text_projection",
)}
_LONGEST_COMPOUND = max(len(c) for c in _COMPOUNDS)
_KOHYA_PREFIXES = (("lora_unet_", "unet"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2"),
                   ("lora_te_", "text_encoder"))
_SGM_BLOCKS = ("input_blocks", "middle_block", "output_blocks")
# LyCORIS algorithms other than LoCon (which uses lora_down/lora_up) have their own tensor names.
_LYCORIS_KEYS = ("hada_w1", "lokr_w1", "lokr_w2", "lora_mid", "oft_", "dora_scale", "diff_b", ".diff")
_DIFFUSERS_KEY = re.compile(r"^(?P<module>.+?)\.(?P<part>lora_A|lora_B|lora\.down|lora\.up|lora_linear_layer\.down|"
                            r"lora_linear_layer\.up)\.weight$")


@dataclass
class LoraLayer:
    down: torch.Tensor  # [rank, in] (Linear) or [rank, in, kh, kw] (Conv2d, LyCORIS LoCon)
    up: torch.Tensor  # [out, rank] or [out, rank, 1, 1]
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


Layers = dict[str, LoraLayer]


# --- kohya keys ---------------------------------------------------------------------------------------------------

def kohya_name(module: str, two_text_encoders: bool = False) -> str:
    """`unet.down_blocks.0.x.to_q` -> `lora_unet_down_blocks_0_x_to_q` (text encoders get `text_model_`)."""
    component, _, path = module.partition(".")
    if component == "unet":
        return "lora_unet_" + path.replace(".", "_")
    if component not in TEXT_ENCODERS:
        raise InvalidRequest(f"LoRA module {module!r} belongs to no UNet or text encoder")
    prefix = {"text_encoder": "lora_te1_" if two_text_encoders else "lora_te_", "text_encoder_2": "lora_te2_"}
    return prefix[component] + "text_model_" + path.replace(".", "_")


def module_from_kohya(name: str) -> str:
    """The module path a kohya LoRA name stands for (the inverse of kohya_name for SD 1.x/2.x-style names)."""
    for prefix, component in _KOHYA_PREFIXES:
        if name.startswith(prefix):
            rest = name[len(prefix):]
            if component != "unet":
                rest = rest.removeprefix("text_model_")
            elif rest.startswith(_SGM_BLOCKS):
                raise InvalidRequest(f"{name}: SDXL-style kohya keys (input_blocks/output_blocks) are not converted "
                                     f"by huabu; diffusers loads such files directly (use them with --lora)")
            return f"{component}.{_dotted(rest)}"
    raise InvalidRequest(f"{name!r} is not a kohya LoRA key (lora_unet_... / lora_te_...)")


def _dotted(underscored: str) -> str:
    tokens, parts, i = underscored.split("_"), [], 0
    while i < len(tokens):
        for size in range(_LONGEST_COMPOUND, 1, -1):
            if tuple(tokens[i:i + size]) in _COMPOUNDS:
                parts.append("_".join(tokens[i:i + size]))
                i += size
                break
        else:
            parts.append(tokens[i])
            i += 1
    return ".".join(parts)


def to_kohya(layers: Layers, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """kohya/A1111 state dict; `.alpha` stays float32 (readers take it with .item())."""
    two = any(module.startswith("text_encoder_2.") for module in layers)
    state = {}
    for module, layer in layers.items():
        base = kohya_name(module, two)
        state[f"{base}.lora_down.weight"] = _cast(layer.down, dtype)
        state[f"{base}.lora_up.weight"] = _cast(layer.up, dtype)
        state[f"{base}.alpha"] = torch.tensor(float(layer.alpha), dtype=torch.float32)
    return state


def from_kohya(state: Mapping[str, torch.Tensor]) -> Layers:
    """Layers of a kohya-key state dict; a missing `.alpha` means alpha = rank, as in sd-scripts."""
    _refuse_lycoris(state)
    layers: Layers = {}
    for key, down in state.items():
        if not key.endswith(".lora_down.weight"):
            if not key.endswith((".lora_up.weight", ".alpha")):
                raise InvalidRequest(f"unexpected key {key!r} in a kohya LoRA")
            continue
        base = key[: -len(".lora_down.weight")]
        if f"{base}.lora_up.weight" not in state:
            raise InvalidRequest(f"kohya LoRA has {key} but no {base}.lora_up.weight")
        alpha = state.get(f"{base}.alpha")
        layers[module_from_kohya(base)] = LoraLayer(down, state[f"{base}.lora_up.weight"],
                                                    float(alpha.item()) if alpha is not None else down.shape[0])
    return layers


# --- diffusers / peft keys ----------------------------------------------------------------------------------------

def _file_module(module: str) -> str:
    """Module path as diffusers/peft files name it: CLIP text modules under `text_model.` (what transformers 4
    and files in the wild use; diffusers maps it on load)."""
    component, _, path = module.partition(".")
    return f"{component}.text_model.{path}" if component in TEXT_ENCODERS else module


def to_diffusers(layers: Layers, dtype: torch.dtype | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict with peft keys, diffusers' adapter metadata: LoraConfig fields per component, prefixed)."""
    state: dict[str, torch.Tensor] = {}
    by_component: dict[str, dict[str, LoraLayer]] = {}
    for module, layer in layers.items():
        name = _file_module(module)
        state[f"{name}.lora_A.weight"] = _cast(layer.down, dtype)
        state[f"{name}.lora_B.weight"] = _cast(layer.up, dtype)
        component, _, path = module.partition(".")
        by_component.setdefault(component, {})[path] = layer
    metadata: dict[str, Any] = {}
    for component, modules in by_component.items():
        rank = Counter(layer.rank for layer in modules.values()).most_common(1)[0][0]
        alpha = Counter(layer.alpha for layer in modules.values()).most_common(1)[0][0]
        config = {"r": rank, "lora_alpha": alpha, "target_modules": sorted(modules),
                  "rank_pattern": {p: m.rank for p, m in sorted(modules.items()) if m.rank != rank},
                  "alpha_pattern": {p: m.alpha for p, m in sorted(modules.items()) if m.alpha != alpha}}
        metadata.update({f"{component}.{key}": value for key, value in config.items()})
    return state, metadata


def from_diffusers(state: Mapping[str, torch.Tensor], adapter_metadata: Mapping[str, Any] | None = None) -> Layers:
    """Layers of a diffusers/peft-key state dict. Alphas come from the adapter metadata (per-module patterns as
    peft matches them), else `<module>.alpha` tensors, else alpha = rank (peft's convention without metadata)."""
    _refuse_lycoris(state)
    downs, ups = {}, {}
    for key, tensor in state.items():
        if key.endswith(".alpha"):
            continue
        match = _DIFFUSERS_KEY.match(key)
        if match is None or match["module"].split(".")[0] not in ("unet", *TEXT_ENCODERS):
            raise InvalidRequest(f"unexpected key {key!r} in a diffusers LoRA (expected unet./text_encoder. "
                                 f"prefixes and lora_A/lora_B weights)")
        file_module = match["module"]
        (downs if match["part"].endswith(("A", "down")) else ups)[file_module] = tensor
    layers: Layers = {}
    for file_module, down in downs.items():
        if file_module not in ups:
            raise InvalidRequest(f"diffusers LoRA has {file_module}.lora_A but no lora_B")
        component, _, path = file_module.partition(".")
        if component in TEXT_ENCODERS:
            path = path.removeprefix("text_model.")
        alpha = _metadata_alpha(adapter_metadata, component, path)
        if alpha is None and f"{file_module}.alpha" in state:
            alpha = float(state[f"{file_module}.alpha"].item())
        layers[f"{component}.{path}"] = LoraLayer(down, ups[file_module], alpha if alpha is not None else down.shape[0])
    return layers


def _metadata_alpha(metadata: Mapping[str, Any] | None, component: str, path: str) -> float | None:
    if not metadata or f"{component}.lora_alpha" not in metadata:
        return None
    for pattern, value in (metadata.get(f"{component}.alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", path):  # peft's rule for rank/alpha patterns
            return float(value)
    return float(metadata[f"{component}.lora_alpha"])


def from_peft(component: str, state: Mapping[str, torch.Tensor], alpha: float) -> Layers:
    """Layers from `peft.get_peft_model_state_dict(model)` of one component trained with one alpha."""
    downs = {k[: -len(".lora_A.weight")]: v for k, v in state.items() if k.endswith(".lora_A.weight")}
    return {f"{component}.{path}": LoraLayer(down, state[f"{path}.lora_B.weight"], float(alpha))
            for path, down in downs.items()}


def _refuse_lycoris(state: Mapping[str, torch.Tensor]) -> None:
    odd = next((k for k in state if any(marker in k for marker in _LYCORIS_KEYS)), None)
    if odd is not None:
        raise InvalidRequest(f"{odd!r} is a LyCORIS LoHa/LoKr/DoRA tensor; huabu converts plain LoRA and LoCon only")


def detect_format(keys) -> str:
    """"kohya", "diffusers" or "unknown" from a state dict's keys."""
    keys = list(keys)
    if keys and all(k.startswith(("lora_unet_", "lora_te")) for k in keys):
        return KOHYA
    if any(_DIFFUSERS_KEY.match(k) for k in keys):
        return DIFFUSERS
    return "unknown"


# --- files, metadata and hashes -----------------------------------------------------------------------------------

def read_lora(path: str | os.PathLike) -> tuple[Layers, dict[str, str]]:
    """Layers and safetensors metadata of a LoRA file in either layout (safetensors only: judged by its bytes)."""
    from safetensors.torch import load_file

    from huabu.engine import checkpoints

    path = Path(path)
    if not path.is_file():
        raise ModelNotFound(f"LoRA file not found: {path}")
    if checkpoints.sniff_format(path) != checkpoints.SAFETENSORS:
        raise InvalidRequest(f"{path.name} is not a .safetensors file; huabu reads LoRA files in safetensors only")
    metadata = checkpoints.safetensors_metadata(path)
    state = load_file(path)
    fmt = detect_format(state)
    if fmt == KOHYA:
        return from_kohya(state), metadata
    if fmt == DIFFUSERS:
        adapter = json.loads(metadata[ADAPTER_METADATA_KEY]) if ADAPTER_METADATA_KEY in metadata else None
        return from_diffusers(state, adapter), metadata
    raise InvalidRequest(f"{path.name} holds neither kohya (lora_unet_...) nor diffusers (unet....lora_A) LoRA keys")


def write_lora(path: str | os.PathLike, layers: Layers, fmt: str = KOHYA, metadata: Mapping[str, Any] | None = None,
               dtype: torch.dtype | None = None) -> Path:
    """Write `layers` as a .safetensors file in `fmt`, atomically, with `metadata` (values made strings) plus
    kohya's precalculated `sshs_model_hash` / `sshs_legacy_hash`. Returns the path."""
    if fmt not in FORMATS:
        raise InvalidRequest(f"LoRA format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not layers:
        raise InvalidRequest("a LoRA file needs at least one layer")
    meta = {key: value if isinstance(value, str) else json.dumps(value) for key, value in (metadata or {}).items()}
    meta.pop(ADAPTER_METADATA_KEY, None)
    if fmt == KOHYA:
        tensors = to_kohya(layers, dtype)
    else:
        tensors, adapter = to_diffusers(layers, dtype)
        meta[ADAPTER_METADATA_KEY] = json.dumps(adapter, indent=2, sort_keys=True)
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = addnet_hashes(tensors, meta)
    meta["format"] = "pt"
    return _save_atomic(tensors, meta, Path(path))


def convert_lora(src: str | os.PathLike, dst: str | os.PathLike, fmt: str) -> Path:
    """Rewrite the LoRA file `src` in layout `fmt` at `dst`, keeping its metadata (hashes recomputed)."""
    layers, metadata = read_lora(src)
    dtype = next(iter(layers.values())).down.dtype
    return write_lora(dst, layers, fmt, metadata, dtype)


def addnet_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) as sd-scripts precalculates them: serialize with only the `ss_*`
    metadata; the model hash is the sha256 of the bytes after the header (so equal to the written file's, whatever
    its metadata), the legacy hash the first 8 hex of the sha256 of the 64 KiB at offset 1 MiB."""
    from safetensors.torch import save

    blob = save(dict(tensors), {k: v for k, v in metadata.items() if k.startswith("ss_")})
    (header_len,) = struct.unpack("<Q", blob[:8])
    model_hash = hashlib.sha256(blob[8 + header_len:]).hexdigest()
    legacy_hash = hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]
    return model_hash, legacy_hash


def a1111_lora_hash(path: str | os.PathLike, hashes=None) -> str:
    """The hash A1111 shows for a LoRA (`Lora hashes`, the first 12 hex): the file's `sshs_model_hash` when its
    metadata has one, else the addnet hash of a safetensors file (sha256 after the header), else the file sha256.
    `hashes` (an engine HashCache) caches the computed ones."""
    from huabu.engine import checkpoints

    if checkpoints.sniff_format(path) != checkpoints.SAFETENSORS:
        return hashes.sha256(path) if hashes else checkpoints.file_sha256(path)
    stored = checkpoints.safetensors_metadata(path).get("sshs_model_hash", "")
    if re.fullmatch(r"[0-9a-f]{64}", stored):
        return stored
    return hashes.sha256(path, kind="sshs") if hashes else checkpoints.safetensors_data_sha256(path)


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    # A copy: safetensors refuses tensors that share storage (views of one trained parameter).
    return tensor.detach().to("cpu", dtype or tensor.dtype).contiguous().clone()


def _save_atomic(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> Path:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path
