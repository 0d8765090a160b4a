"""Checkpoint merger with A1111's semantics (modules/extras.py run_modelmerger), writing one LDM-key safetensors.

Every input is read as LDM ("single file") keys: single files as they are, diffusers folders through
engine.convert. Per key whose name holds "model": weighted sum A*(1-a) + B*a; add difference A + (B-C)*a, where a
key of B missing from C counts as a zero difference; no interpolation copies A. A 9-channel inpainting A merges
its first four input channels with a 4-channel B, as A1111 does; keys only B has are copied. Arithmetic is float32
whatever the inputs hold, then cast to fp16 (`fp16`) or back to A's dtype. A VAE is baked by replacing A's
`first_stage_model.` weights; LoRAs are baked by fusing them into the merged model's weights.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huabu.core.atomic import atomic_path
from huabu.core.errors import InvalidRequest, ModelNotFound
from huabu.core.requests import LoraSpec
from huabu.core.settings import Settings
from huabu.engine import checkpoints
from huabu.engine.convert import VAE_PREFIX, pipeline_to_ldm, vae_to_ldm
from huabu.engine.models import BUILTIN_MODEL, ModelManager, ModelRef

# CLI word -> A1111's interp_method name (what the merge recipe metadata records)
METHODS = {"weighted-sum": "Weighted sum", "add-difference": "Add difference", "no-interpolation": "No interpolation"}
# A1111 leaves these as A has them (checkpoint_dict_skip_on_merge)
_SKIP = {"cond_stage_model.transformer.text_model.embeddings.position_ids"}


@dataclass(frozen=True)
class MergeRecipe:
    """What to merge: A, B, C as model specs (names in the models folder, paths, huabu-tiny), the method (a
    METHODS key), the multiplier, and what to bake in."""

    primary: str
    secondary: str | None = None
    tertiary: str | None = None
    method: str = "weighted-sum"
    alpha: float = 0.3
    fp16: bool = False
    vae: str | None = None  # a VAE single file (LDM or diffusers keys) or a diffusers AutoencoderKL folder
    loras: tuple[LoraSpec, ...] = ()
    config: str | None = None  # to load a single-file A for LoRA baking when its kind is not detected (--model-config)


def check_recipe(recipe: MergeRecipe) -> None:
    """One-line InvalidRequest for a recipe that names the wrong number of models or an unknown method."""
    if recipe.method not in METHODS:
        raise InvalidRequest(f"merge method {recipe.method!r} is not one of {', '.join(METHODS)}")
    if recipe.method == "weighted-sum" and not recipe.secondary:
        raise InvalidRequest("weighted-sum merges two models: give A and B")
    if recipe.method == "add-difference" and not (recipe.secondary and recipe.tertiary):
        raise InvalidRequest("add-difference needs three models: A + (B - C) * alpha")


def merge_checkpoints(recipe: MergeRecipe, settings: Settings, output: str | Path,
                      models: ModelManager | None = None) -> Path:
    """Merge as `recipe` says and write `output` (.safetensors) atomically, with A1111's merge metadata."""
    check_recipe(recipe)
    output = Path(output)
    if output.suffix.lower() != ".safetensors":
        raise InvalidRequest(f"the merged model is written as safetensors: name it .safetensors (got {output.name})")
    models = models or ModelManager(settings)
    refs = [models.resolve(spec) for spec in _inputs(recipe)]
    state = _read(models, refs[0], settings.allow_unsafe_pickle)
    if recipe.method != "no-interpolation":
        other = _read(models, refs[1], settings.allow_unsafe_pickle)
        if recipe.method == "add-difference":
            other = _difference(other, _read(models, refs[2], settings.allow_unsafe_pickle))
        state = merge_state_dicts(state, other, recipe.method, recipe.alpha)
    if recipe.vae:
        state = bake_vae(state, read_vae(Path(recipe.vae).expanduser(), settings.allow_unsafe_pickle))
    state = _cast(state, recipe.fp16)
    metadata = merge_metadata(recipe, refs, models, state)
    if recipe.loras:
        state = _bake_loras(state, metadata, recipe, settings, models, refs[0])
    return _write(state, metadata, output)


def _inputs(recipe: MergeRecipe) -> list[str]:
    specs = [recipe.primary]
    if recipe.method != "no-interpolation":
        specs.append(recipe.secondary)
    if recipe.method == "add-difference":
        specs.append(recipe.tertiary)
    return specs


def _read(models: ModelManager, ref: ModelRef, allow_pickle: bool) -> dict[str, Any]:
    """LDM-key tensors of a model: a single file's own, a diffusers folder's converted (SD 1.x layout)."""
    if ref.kind == "single-file":
        return checkpoints.load_state_dict(ref.location, allow_pickle)
    if ref.kind == "hub":
        raise ModelNotFound(f"{ref.spec!r} is not a local model; merge files or folders on this machine")
    try:
        return pipeline_to_ldm(models.load(ref.spec, ref.config).pipeline)
    except ValueError as err:
        raise InvalidRequest(f"{ref.name}: {err}") from None


def merge_state_dicts(a: dict[str, Any], b: dict[str, Any], method: str, alpha: float) -> dict[str, Any]:
    """A merged with B (B already holds B-C for add-difference) per A1111's rules; A's dict is not changed."""
    merged = dict(a)
    combine = _weighted_sum if method == "weighted-sum" else _add
    for key, tensor in a.items():
        if "model" not in key or key not in b or key in _SKIP:
            continue
        other = b[key]
        if tensor.shape == other.shape:
            merged[key] = combine(tensor, other, alpha)
        elif _inpaint_pair(tensor, other):
            merged[key] = tensor.float().clone()
            merged[key][:, :4] = combine(tensor[:, :4], other, alpha)
        else:
            raise InvalidRequest(f"cannot merge {key}: A has shape {tuple(tensor.shape)}, B {tuple(other.shape)} "
                                 f"(different model types?)")
    for key, tensor in b.items():  # as A1111: weights only B has are kept
        if "model" in key and key not in merged:
            merged[key] = tensor
    return merged


def _weighted_sum(a, b, alpha: float):
    return (1 - alpha) * a.float() + alpha * b.float()


def _add(a, difference, alpha: float):
    return a.float() + alpha * difference.float()


def _difference(b: dict[str, Any], c: dict[str, Any]) -> dict[str, Any]:
    import torch

    return {key: (tensor.float() - c[key].float() if key in c else torch.zeros_like(tensor, dtype=torch.float32))
            if "model" in key and key not in _SKIP else tensor for key, tensor in b.items()}


def _inpaint_pair(a, b) -> bool:
    """A 9-channel (inpainting) input convolution of A against B's 4-channel one; B inpainting with A not is an
    error, as in A1111."""
    if a.ndim != 4 or b.ndim != 4 or a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
        return False
    if a.shape[1] == 4 and b.shape[1] == 9:
        raise InvalidRequest("when merging an inpainting model with a normal one, A must be the inpainting model")
    return a.shape[1] == 9 and b.shape[1] == 4


def read_vae(path: Path, allow_pickle: bool) -> dict[str, Any]:
    """VAE weights in LDM keys (no prefix) from a VAE file (LDM or diffusers keys) or an AutoencoderKL folder."""
    if path.is_dir():
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(path, local_files_only=True)
        return vae_to_ldm(vae.state_dict(), vae.config)
    state = checkpoints.load_state_dict(path, allow_pickle)
    if any(key.startswith(VAE_PREFIX) for key in state):  # a whole checkpoint: take its VAE
        return {key[len(VAE_PREFIX):]: value for key, value in state.items() if key.startswith(VAE_PREFIX)}
    if any(".down_blocks." in key for key in state):  # diffusers AutoencoderKL keys
        raise InvalidRequest(f"{path.name} has diffusers VAE keys; give its diffusers folder (with config.json)")
    return state


def bake_vae(state: dict[str, Any], vae: dict[str, Any]) -> dict[str, Any]:
    """A's `first_stage_model.` weights replaced by the VAE's (A1111 'Bake in VAE')."""
    missing = [key for key in state if key.startswith(VAE_PREFIX) and key[len(VAE_PREFIX):] not in vae]
    if missing:
        raise InvalidRequest(f"the VAE does not fit the model: it lacks {missing[0][len(VAE_PREFIX):]}")
    baked = dict(state)
    baked.update({VAE_PREFIX + key: value for key, value in vae.items()})
    return baked


def _cast(state: dict[str, Any], fp16: bool) -> dict[str, Any]:
    import torch

    out = {}
    for key, tensor in state.items():
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float16 if fp16 else torch.float32)
        out[key] = tensor.detach().contiguous()
    return out


def merge_metadata(recipe: MergeRecipe, refs: list[ModelRef], models: ModelManager,
                   state: dict[str, Any]) -> dict[str, str]:
    """A1111's safetensors metadata for a merge: `sd_merge_recipe` and `sd_merge_models` (by sha256), plus
    `huabu_config` naming the config A loads with, so the file loads offline."""
    hashes = [models.model_sha256(ref) for ref in refs] + [None] * (3 - len(refs))
    inpaint_key = "model.diffusion_model.input_blocks.0.0.weight"
    recipe_json = {"type": "webui", "primary_model_hash": hashes[0], "secondary_model_hash": hashes[1],
                   "tertiary_model_hash": hashes[2], "interp_method": METHODS[recipe.method],
                   "multiplier": recipe.alpha, "save_as_half": recipe.fp16, "custom_name": "",
                   "config_source": 0, "bake_in_vae": Path(recipe.vae).name if recipe.vae else "None",
                   "discard_weights": "",
                   "is_inpainting": bool(inpaint_key in state and state[inpaint_key].shape[1] == 9),
                   "is_instruct_pix2pix": False}
    merged_models = {digest: {"name": ref.name, "legacy_hash": None, "sd_merge_recipe": None}
                     for ref, digest in zip(refs, hashes) if digest}
    metadata = {"format": "pt", "sd_merge_recipe": json.dumps(recipe_json),
                "sd_merge_models": json.dumps(merged_models)}
    config = _config_name(refs[0])
    if config:
        metadata["huabu_config"] = config
    return metadata


def _config_name(ref: ModelRef) -> str | None:
    if ref.kind == "builtin":
        return BUILTIN_MODEL
    if ref.kind == "single-file" and Path(ref.location).suffix.lower() == ".safetensors":
        return checkpoints.safetensors_metadata(ref.location).get("huabu_config")
    return None


def _bake_loras(state: dict[str, Any], metadata: dict[str, str], recipe: MergeRecipe, settings: Settings,
                models: ModelManager, primary: ModelRef) -> dict[str, Any]:
    """The merged weights with the LoRAs fused in: the merge loaded as a pipeline (A's config), the LoRAs applied
    at their weights as for a prompt, fused, and converted back to LDM keys."""
    import torch

    from huabu.engine.loras import apply_loras, resolve_loras

    config = recipe.config or (primary.location if primary.kind == "diffusers" else None)
    with tempfile.TemporaryDirectory() as folder:
        merged = _write(state, metadata, Path(folder) / "merged.safetensors")
        fp32 = settings.with_(dtype="fp32", device="cpu", model_cache_size=1)
        # a manager of its own, so nothing of the merge stays cached
        model = ModelManager(fp32, models.hashes).load(str(merged), config)
        pipe = model.pipeline
        resolved = resolve_loras(recipe.loras, settings.loras_dir, models.hashes, settings.allow_unsafe_pickle)
        apply_loras(pipe, resolved, model.lora_targets)
        pipe.fuse_lora(adapter_names=[lora.adapter_name for lora in resolved])
        pipe.unload_lora_weights()
        baked = pipeline_to_ldm(pipe)
    dtype = torch.float16 if recipe.fp16 else torch.float32
    out = dict(state)
    out.update({key: value.to(dtype).detach().contiguous() for key, value in baked.items()})
    return out


def _write(state: dict[str, Any], metadata: dict[str, str], output: Path) -> Path:
    from safetensors.torch import save_file

    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return output

