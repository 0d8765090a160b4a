"""Single-file checkpoints (A1111 / ComfyUI `.safetensors`): the diffusers config a file is loaded with, and the
pipeline assembled from its keys, offline.

SD 1.x / 2.x / SDXL files hold every part under LDM prefixes. SD3 / SD3.5 files hold the MMDiT, the VAE and CLIP-L/G
(T5-XXL in some); FLUX files mostly hold the transformer alone. A part the file lacks comes from the config folder's
own weights when the user names a diffusers folder (`--model-config`, as diffusers' `from_single_file(config=...)`);
SD3 runs without T5 when neither has it, as diffusers allows.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
from pathlib import Path
from typing import Any

from huabu.core.errors import ModelNotFound
from huabu.engine.bundled import bundled_configs, bundled_tokenizer, has_tokenizer_files

log = logging.getLogger(__name__)

# diffusers' single-file model types (infer_diffusers_model_type) -> bundled config.
_UNET_TYPES = {
    "v1": "sd15", "inpainting": "sd15", "v2": "sd2-v", "inpainting_v2": "sd2-base",
    "xl_base": "sdxl", "xl_inpaint": "sdxl",
}
_TRANSFORMER_TYPES = {
    "sd3": "sd3-medium", "sd35_medium": "sd35-medium", "sd35_large": "sd35-large",
    "flux-dev": "flux-dev", "flux-schnell": "flux-schnell",
}
# One key of each transformer family, found at any size (diffusers' detection also checks the released sizes).
_FAMILY_KEYS = {"SD3": "joint_blocks.0.context_block.adaLN_modulation.1.bias",
                "FLUX": "double_blocks.0.img_attn.norm.key_norm.scale"}
_UNET_IN_KEY = "model.diffusion_model.input_blocks.0.0.weight"

# Where the parts of a transformer pipeline sit in a single file (the reference code's and ComfyUI's layout); the
# transformer is everything else, under `model.diffusion_model.` or bare.
_VAE_PREFIXES = ("first_stage_model.", "vae.")
_PART_PREFIXES = {
    "StableDiffusion3Pipeline": {"vae": _VAE_PREFIXES, "text_encoder": ("text_encoders.clip_l.transformer.",),
                                 "text_encoder_2": ("text_encoders.clip_g.transformer.",),
                                 "text_encoder_3": ("text_encoders.t5xxl.transformer.",)},
    "FluxPipeline": {"vae": _VAE_PREFIXES, "text_encoder": ("text_encoders.clip_l.transformer.",),
                     "text_encoder_2": ("text_encoders.t5xxl.transformer.",)},
}
_FAMILY_NAMES = {"StableDiffusion3Pipeline": "SD3", "FluxPipeline": "FLUX"}
# Parts a pipeline runs without (passed as None): SD3's T5.
_OPTIONAL_PARTS = {"StableDiffusion3Pipeline": {"text_encoder_3", "tokenizer_3"}}


def config_for(path: Path, state: dict, metadata: dict[str, str], config: str | None) -> tuple[Path, str]:
    """The diffusers config folder to load a single-file checkpoint with: the user's, the one named in the file's
    metadata (huabu exports), or the bundled one for the model type detected from the keys."""
    configs = bundled_configs()
    if config:
        if config in configs:
            return configs[config], config
        folder = Path(config).expanduser()
        if (folder / "model_index.json").is_file():
            return folder, str(folder)
        raise ModelNotFound(f"model config {config!r} is neither a bundled config ({', '.join(configs)}) nor a "
                            f"diffusers folder with model_index.json")
    named = metadata.get("huabu_config")
    if named in configs:
        return configs[named], named
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    model_type = infer_diffusers_model_type(state)
    family = next((name for name, key in _FAMILY_KEYS.items()
                   if key in state or f"model.diffusion_model.{key}" in state), None)
    if model_type in _TRANSFORMER_TYPES:
        name = _TRANSFORMER_TYPES[model_type]
    elif family:
        raise ModelNotFound(f"{path.name} is an {family} transformer of a size huabu has no config for; pass "
                            f"--model-config with its diffusers folder")
    elif model_type in _UNET_TYPES:
        name = _UNET_TYPES[model_type]
        if name == "sd2-v" and _ldm_yaml_says_epsilon(path):
            name = "sd2-base"
    else:
        raise ModelNotFound(f"{path.name} looks like a {model_type!r} checkpoint; huabu loads SD 1.x, SD 2.x, SDXL, "
                            f"SD3 / SD3.5 and FLUX.1 dev / schnell single files (pass --model-config for others)")
    return configs[name], name


def _ldm_yaml_says_epsilon(path: Path) -> bool:
    """SD 2.x 512-base and 768-v files have the same keys; A1111 users keep `<name>.yaml` beside the file, whose
    `parameterization: "v"` marks the 768-v kind. No yaml: assume 768-v, as diffusers does."""
    yaml_path = path.with_suffix(".yaml")
    if not yaml_path.is_file():
        return False
    import yaml

    try:
        params = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))["model"]["params"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return False
    return params.get("parameterization", "eps") != "v"


def assemble(state: dict, config_dir: Path, dtype, file_name: str = "the file") -> Any:
    """Build the pipeline of `config_dir/model_index.json` from a single file's state dict."""
    index = json.loads((config_dir / "model_index.json").read_text(encoding="utf-8"))
    if index["_class_name"] in _PART_PREFIXES:
        return _assemble_transformer_pipeline(state, config_dir, index, _cast_dtype(dtype), file_name)
    unet_in = state[_UNET_IN_KEY].shape[1] if _UNET_IN_KEY in state else None
    return assemble_ldm(state, config_dir, dtype, {"unet": {"in_channels": unet_in}} if unet_in else {})


def _cast_dtype(dtype):
    import torch

    # Only cast when asked for a non-default dtype (a cast to float32 makes diffusers warn for nothing).
    return None if dtype in (None, torch.float32) else dtype


def assemble_ldm(state: dict, config_dir: Path, dtype, overrides: dict[str, dict] | None = None) -> Any:
    """Build a UNet pipeline (SD 1.x / 2.x / SDXL) from an LDM-key state dict.

    diffusers' pipeline-level `from_single_file` takes only a path (and picks its reader by extension), so we run its
    per-component loaders on the state dict we read safely: `from_single_file` for diffusers models, diffusers'
    CLIP converter for transformers text encoders, and the config folder for schedulers and tokenizers.
    """
    import diffusers
    from diffusers import SchedulerMixin
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    overrides = overrides or {}
    dtype = _cast_dtype(dtype)
    index = json.loads((config_dir / "model_index.json").read_text(encoding="utf-8"))
    components: dict[str, Any] = {}
    for name, cls in _component_classes(index).items():
        if issubclass(cls, SchedulerMixin):
            components[name] = cls.from_pretrained(config_dir, subfolder=name)
        elif issubclass(cls, PreTrainedTokenizerBase):
            components[name] = bundled_tokenizer(cls, config_dir / name)
        elif issubclass(cls, PreTrainedModel):
            components[name] = create_diffusers_clip_model_from_ldm(
                cls, state, subfolder=name, config=str(config_dir), torch_dtype=dtype, local_files_only=True)
        else:
            components[name] = cls.from_single_file(state, config=str(config_dir), subfolder=name,
                                                    dtype=dtype, local_files_only=True, **overrides.get(name, {}))
    return _build(getattr(diffusers, index["_class_name"]), components)


def _component_classes(index: dict[str, Any]) -> dict[str, type]:
    classes = {}
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        library, class_name = spec
        classes[name] = getattr(importlib.import_module(library), class_name)
    return classes


def _build(pipeline_class, components: dict[str, Any]) -> Any:
    import torch

    for component in components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()  # models built from a config start in training mode (T5's dropout would be live)
    accepted = inspect.signature(pipeline_class.__init__).parameters
    for name in accepted:
        if name not in components and name != "self" and accepted[name].default is inspect.Parameter.empty:
            components[name] = None  # optional modules huabu does not use (safety checker, image encoder)
    if "requires_safety_checker" in accepted:
        components["requires_safety_checker"] = False
    return pipeline_class(**components)


def _split_parts(state: dict, prefixes: dict[str, tuple[str, ...]]) -> dict[str, dict]:
    parts: dict[str, dict] = {name: {} for name in (*prefixes, "transformer")}
    for key, value in state.items():
        part = next((name for name, starts in prefixes.items() if key.startswith(starts)), "transformer")
        parts[part][key] = value
    return parts


def _has_weights(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.safetensors"))


def missing_parts(state: dict, config_dir: Path, index: dict[str, Any]) -> list[str]:
    """The components of a transformer pipeline that neither the file nor the config folder has (a T5 tokenizer
    counts as missing unless the folder has its files: huabu cannot bundle T5's SentencePiece model)."""
    from transformers import PreTrainedTokenizerBase

    parts = _split_parts(state, _PART_PREFIXES[index["_class_name"]])
    missing = []
    for name, cls in _component_classes(index).items():
        if issubclass(cls, PreTrainedTokenizerBase):
            if not has_tokenizer_files(config_dir / name) and "CLIP" not in cls.__name__:
                missing.append(name)
        elif name in parts and not parts[name] and not _has_weights(config_dir / name):
            missing.append(name)
    return missing


def _assemble_transformer_pipeline(state: dict, config_dir: Path, index: dict[str, Any], dtype, file_name: str):
    import diffusers
    from diffusers import SchedulerMixin
    from diffusers.loaders.single_file_utils import create_diffusers_t5_model_from_checkpoint
    from transformers import PreTrainedTokenizerBase

    pipeline_name = index["_class_name"]
    prefixes = _PART_PREFIXES[pipeline_name]
    parts = _split_parts(state, prefixes)
    missing = missing_parts(state, config_dir, index)
    optional = _OPTIONAL_PARTS.get(pipeline_name, set())
    required = [name for name in missing if name not in optional]
    if required:
        raise ModelNotFound(f"{file_name} lacks {', '.join(required)} and {config_dir.name} has none to lend; pass "
                            f"--model-config with a diffusers {_FAMILY_NAMES[pipeline_name]} folder that has "
                            f"{'it' if len(required) == 1 else 'them'}")
    left_out = set(missing) | {_partner(name) for name in missing}
    components: dict[str, Any] = {}
    for name, cls in _component_classes(index).items():
        if name in left_out:
            components[name] = None
        elif issubclass(cls, SchedulerMixin):
            components[name] = cls.from_pretrained(config_dir, subfolder=name)
        elif issubclass(cls, PreTrainedTokenizerBase):
            components[name] = bundled_tokenizer(cls, config_dir / name)
        elif not parts[name]:  # not in the file: the config folder's own weights
            components[name] = cls.from_pretrained(config_dir, subfolder=name, local_files_only=True,
                                                   **({"dtype": dtype} if dtype is not None else {}))
        elif "T5" in cls.__name__:
            components[name] = create_diffusers_t5_model_from_checkpoint(
                cls, parts[name], subfolder=name, config=str(config_dir), torch_dtype=dtype, local_files_only=True)
        elif name.startswith("text_encoder"):
            components[name] = _clip_from_file(cls, parts[name], prefixes[name][0], config_dir / name, dtype)
        else:
            components[name] = cls.from_single_file(parts[name], config=str(config_dir), subfolder=name,
                                                    dtype=dtype, local_files_only=True)
    unused = [name for name, part in parts.items() if part and components.get(name) is None]
    if unused:
        log.warning("%s: the file's %s left out (%s has no config or tokenizer for it); pass --model-config with "
                    "a diffusers folder that has one to use it", file_name, " and ".join(unused), config_dir.name)
    return _build(getattr(diffusers, pipeline_name), components)


def _partner(name: str) -> str:
    """text_encoder_3 <-> tokenizer_3: a pipeline leaves out both of a pair or neither."""
    if name.startswith("tokenizer"):
        return "text_encoder" + name.removeprefix("tokenizer")
    return "tokenizer" + name.removeprefix("text_encoder")


def _clip_from_file(cls, part: dict, prefix: str, config_folder: Path, dtype):
    """A CLIP text encoder from its `text_encoders.clip_*.transformer.` keys.

    Written here rather than with diffusers' `create_diffusers_clip_model_from_ldm`, which tells CLIP-L from CLIP-G
    by width alone (both are CLIP-L at equal widths, as in huabu-tiny-dit) and always sets CLIP-L's projection to
    the identity, even when the file carries one."""
    import torch
    from accelerate import init_empty_weights

    config = cls.config_class.from_pretrained(config_folder)
    with init_empty_weights():
        model = cls(config)
    expected = model.state_dict()
    weights = {key[len(prefix):]: value for key, value in part.items()}
    if "text_model.embeddings.token_embedding.weight" not in expected:  # transformers >= 5.6 flattens CLIPTextModel
        weights = {key.removeprefix("text_model."): value for key, value in weights.items()}
    if "text_projection.weight" in expected and "text_projection.weight" not in weights:
        # The SD3 reference files keep CLIP-L without a projection: SD3 uses its pooled output as it is.
        weights["text_projection.weight"] = torch.eye(config.projection_dim, config.hidden_size)
    result = model.load_state_dict(weights, strict=False, assign=True)
    parameters = dict(model.named_parameters())
    absent = [key for key in result.missing_keys if key in parameters]
    if absent:
        raise ModelNotFound(f"the file's {prefix.split('.')[1]} encoder lacks {len(absent)} weights ({absent[0]}, ...)")
    return model.to(dtype or torch.float32)
