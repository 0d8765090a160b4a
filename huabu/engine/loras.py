"""Where LoRAs meet the engine: finding the files a request names, their A1111 hashes, and making exactly the
requested LoRAs active in a pipeline with their weights.

Loading goes through diffusers (`load_lora_weights`, which reads diffusers/peft keys, kohya's and LyCORIS LoCon),
one peft adapter per file, named by the file's sha256. Adapters stay loaded in the model between generations (a
small per-model cache), and each generation activates only its own with `set_adapters`; a generation without LoRA
disables them, so its image is the base model's, exactly.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huabu.core.errors import InvalidRequest, ModelNotFound, first_line
from huabu.engine import checkpoints
from huabu.engine.lora_sd3 import is_kohya_sd3, sd3_lora_from_kohya
from huabu.engine.models import BUILTIN_DIR

log = logging.getLogger(__name__)

LORA_SUFFIXES = (".safetensors", ".ckpt", ".pt")
BUILTIN_LORAS_DIR = BUILTIN_DIR.parent  # LoRAs shipped with huabu-tiny, beside its folder (huabu-tiny-lcm)
MAX_LOADED_ADAPTERS = 8  # per model; beyond this, adapters the current generation does not use are deleted
# What a LoRA patches: the denoiser (a UNet, or SD3's / FLUX's transformer) and the CLIP text encoders.
DENOISERS = ("unet", "transformer")
LORA_COMPONENTS = (*DENOISERS, "text_encoder", "text_encoder_2")


@dataclass(frozen=True)
class ResolvedLora:
    name: str
    path: Path
    weight: float  # UNet weight
    te_weight: float | None  # text encoder weight when it differs
    sha256: str  # of the whole file: names the loaded adapter
    a1111_hash: str = ""  # A1111's LoRA hash (kohya's sshs/addnet hash); its first 12 hex go in "Lora hashes"
    pickle: bool = False  # a pickle file the settings allowed (resolve_loras refuses the others)

    @property
    def short_hash(self) -> str:
        return (self.a1111_hash or self.sha256)[:12]

    @property
    def adapter_name(self) -> str:
        return f"lora_{self.sha256[:16]}"


def _is_path(name: str) -> bool:
    return "/" in name or "\\" in name


def find_lora(name: str, loras_dir: Path) -> Path:
    """The file for LoRA `name`: a path to a file (`dir/x.safetensors`), else a file in `loras_dir` by file name or
    stem (searching subfolders), else a LoRA file of that name in the working folder, else one shipped beside
    huabu-tiny."""
    path = Path(name).expanduser()
    if _is_path(name):  # a file, or a sub-folder path inside the LoRA folder
        for candidate in (path, loras_dir / name, *(loras_dir / f"{name}{suffix}" for suffix in LORA_SUFFIXES)):
            if candidate.is_file():
                return candidate
        raise ModelNotFound(f"LoRA file not found: {path}")
    if loras_dir.is_dir():
        wanted = name.lower()
        for candidate in sorted(loras_dir.rglob("*")):
            if candidate.suffix.lower() in LORA_SUFFIXES and wanted in (candidate.stem.lower(), candidate.name.lower()):
                return candidate
    if path.suffix.lower() in LORA_SUFFIXES and path.is_file():
        return path
    shipped = BUILTIN_LORAS_DIR / f"{name}.safetensors"
    if shipped.is_file():  # a LoRA shipped with huabu-tiny (huabu-tiny-lcm), when the user has none of that name
        return shipped
    raise ModelNotFound(f"LoRA {name!r} not found in {loras_dir} (looked for {name}.safetensors)")


def resolve_loras(specs: Iterable[Any], loras_dir: Path, hashes: checkpoints.HashCache,
                  allow_pickle: bool = False) -> list[ResolvedLora]:
    """Files and hashes for LoRA specs (anything with name/weight/te_weight: request LoraSpecs, prompt tags)."""
    from huabu.engine.lora_formats import a1111_lora_hash

    resolved = []
    for spec in specs:
        path = find_lora(spec.name, loras_dir)
        fmt = checkpoints.check_loadable(path, allow_pickle)
        name = path.stem if _is_path(spec.name) else spec.name
        resolved.append(ResolvedLora(name, path, float(spec.weight),
                                     None if spec.te_weight is None else float(spec.te_weight), hashes.sha256(path),
                                     a1111_lora_hash(path, hashes), fmt == checkpoints.PICKLE))
    return resolved


def prompt_with_loras(prompt: str, specs: Iterable[Any]) -> tuple[str, list[Any]]:
    """`prompt` with a `<lora:...>` tag appended for each LoRA given outside it (`--lora`, GenerateRequest.loras),
    so that the infotext's prompt line names every LoRA used, as A1111 writes them, and `huabu reproduce` applies
    them again. A spec the prompt already holds as a tag with the same weights is not added (nor applied) twice.
    Also returns the specs no tag can name (a path with `:`, `<` or `>`), to be applied without being written."""
    from huabu.engine.prompts.syntax import LoraRef, extract_loras

    in_prompt = extract_loras(prompt)[1]
    tags, untaggable = [], []
    for spec in specs:
        weight = float(spec.weight)
        te_weight = None if spec.te_weight is None or float(spec.te_weight) == weight else float(spec.te_weight)
        ref = LoraRef(spec.name, weight, te_weight)
        if ref in in_prompt:
            in_prompt.remove(ref)  # each tag stands for one application
        elif any(char in spec.name for char in ":<>"):
            untaggable.append(spec)
        else:  # A1111's order: <lora:name:te:unet>
            weights = [weight] if te_weight is None else [te_weight, weight]
            tags.append(f"<lora:{spec.name}:{':'.join(map(_tag_number, weights))}>")
    if not tags:
        return prompt, untaggable
    return " ".join([prompt, *tags]) if prompt.strip() else "".join([prompt, *tags]), untaggable


def _tag_number(value: float) -> str:
    return str(int(value)) if value.is_integer() else str(value)  # 1 rather than 1.0, as infotext numbers


def apply_loras(pipe: Any, loras: list[ResolvedLora], targets: dict[str, frozenset[str]],
                active: dict[int, tuple] | None = None) -> None:
    """Make exactly `loras` active in `pipe` (and every pipeline sharing its UNet and text encoders) with their
    weights, loading what is not loaded yet; no LoRA disables all adapters (the base model, exactly).

    Pipelines of one model share some components and not others (a video pipeline has its own motion UNet beside
    the stills' text encoder), so each component is checked on its own and a file is loaded into those that lack
    it. `targets` (kept by the caller with the model) remembers which components a file has weights for, learned
    when it is first loaded, so that a UNet-only LoRA is not read again for the text encoder that never holds it.
    `active` (also kept with the model) remembers each component's active adapters and weights, so that a run with
    the same LoRAs as the last skips diffusers' walk over every layer (a few ms a call, 10% of a 4-step batch on a GPU).
    """
    if not hasattr(pipe, "load_lora_weights"):
        if loras:
            raise InvalidRequest(f"{type(pipe).__name__} cannot take LoRAs")
        return
    wanted: dict[str, tuple[ResolvedLora, float, float]] = {}
    for lora in loras:  # the same file twice adds up, as two applications of it would
        _, unet, te = wanted.get(lora.adapter_name, (lora, 0.0, 0.0))
        te_weight = lora.weight if lora.te_weight is None else lora.te_weight
        wanted[lora.adapter_name] = (lora, unet + lora.weight, te + te_weight)
    components = [name for name in LORA_COMPONENTS if getattr(pipe, name, None) is not None]
    holders = _holders(pipe)
    missing = {name: _lacking(components, holders.get(name, set()), targets.get(name)) for name in wanted}
    missing = {name: lacking for name, lacking in missing.items() if lacking}
    stale = [name for name in holders if name not in wanted]
    active = {} if active is None else active
    if missing:
        active.clear()  # loading a file activates it in diffusers, whatever was active before
    if missing and stale and len(holders.keys() | missing.keys()) > MAX_LOADED_ADAPTERS:
        pipe.delete_adapters(stale)
    for name, lacking in missing.items():
        _load(pipe, wanted[name][0], None if name not in holders else lacking)
        targets[name] = targets.get(name, frozenset()) | _holders(pipe).get(name, set())
    for component, names in pipe.get_list_adapters().items():
        model = getattr(pipe, component)
        names = [name for name in wanted if name in names]
        state = (tuple(names), tuple(wanted[name][1 if component in DENOISERS else 2] for name in names))
        if active.get(id(model)) != state:
            _activate(model, list(state[0]), list(state[1]))
            active[id(model)] = state


def _holders(pipe: Any) -> dict[str, set[str]]:
    """adapter name -> the components of `pipe` holding it."""
    found: dict[str, set[str]] = {}
    for component, names in pipe.get_list_adapters().items():
        for name in names:
            found.setdefault(name, set()).add(component)
    return found


def _lacking(components: list[str], holding: set[str], targets: frozenset[str] | None) -> list[str]:
    """The components an adapter still has to be loaded into: those its file has weights for (all of them while
    that is not known yet) that do not hold it."""
    return [name for name in components if name not in holding and (targets is None or name in targets)]


def _load(pipe: Any, lora: ResolvedLora, components: list[str] | None) -> None:
    """Load `lora` into the whole pipeline (`components` None: diffusers' load_lora_weights) or into the listed
    components only, through diffusers' per-component loaders, when others already hold it (loading it there
    again would fail: the adapter name is taken)."""
    source: Any = str(lora.path)
    if lora.pickle:  # allowed by the settings in resolve_loras; read with weights_only=True
        source = checkpoints.load_state_dict(lora.path, allow_pickle=True)
    if type(pipe).__name__.startswith("StableDiffusion3") and is_kohya_sd3(_keys(lora)):
        state = source if isinstance(source, dict) else checkpoints.load_state_dict(lora.path)
        source = sd3_lora_from_kohya(state, pipe.transformer.config.num_layers, f"LoRA {lora.name}")
    try:
        with warnings.catch_warnings():  # peft warns on every adapter after the first, which is how we use it
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            # use_safetensors=True: diffusers would otherwise retry a file it cannot parse with torch.load.
            if components is None:
                pipe.load_lora_weights(source, adapter_name=lora.adapter_name, use_safetensors=not lora.pickle)
            else:
                _load_into(pipe, source, lora, components)
    except Exception as err:  # diffusers raises ValueError, KeyError, RuntimeError... for files that do not fit
        if any(lora.adapter_name in names for names in pipe.get_list_adapters().values()):
            pipe.delete_adapters([lora.adapter_name])
        raise ModelNotFound(f"LoRA {lora.name} ({lora.path.name}) cannot be applied to this model: "
                            f"{first_line(err)[:200]}{_trained_on(lora.path)}") from None
    if components is None and lora.adapter_name not in _holders(pipe):
        # diffusers skips keys it has no converter for (kohya's SD3 keys) and loads nothing, silently
        raise ModelNotFound(f"LoRA {lora.name} ({lora.path.name}) has no weights this model's layers take (keys "
                            f"such as {next(iter(_keys(lora)), '')!r}){_trained_on(lora.path)}")


def _load_into(pipe: Any, source: Any, lora: ResolvedLora, components: list[str]) -> None:
    state, alphas, metadata = pipe.lora_state_dict(source, unet_config=pipe.unet.config,
                                                   use_safetensors=not lora.pickle, return_lora_metadata=True)
    for component in components:
        if component == "unet":
            pipe.load_lora_into_unet(state, alphas, pipe.unet, adapter_name=lora.adapter_name, metadata=metadata,
                                     _pipeline=pipe)
        else:  # the prefix picks the encoder's keys: text_encoder or text_encoder_2 (SDXL)
            pipe.load_lora_into_text_encoder(state, alphas, getattr(pipe, component), prefix=component,
                                             lora_scale=pipe.lora_scale, adapter_name=lora.adapter_name,
                                             metadata=metadata, _pipeline=pipe)


def _keys(lora: ResolvedLora) -> list[str]:
    if lora.pickle:
        return list(checkpoints.load_state_dict(lora.path, allow_pickle=True))
    from safetensors import safe_open

    with safe_open(str(lora.path), "pt") as f:
        return list(f.keys())


def _trained_on(path: Path) -> str:
    if checkpoints.sniff_format(path) != checkpoints.SAFETENSORS:
        return ""
    metadata = checkpoints.safetensors_metadata(path)
    base = metadata.get("ss_base_model_version") or metadata.get("ss_sd_model_name")
    return f" (it was trained on {base})" if base else ""


def _activate(model: Any, names: list[str], weights: list[float]) -> None:
    """Set one component's active adapters and weights, or disable its LoRA layers when none is wanted."""
    from diffusers import ModelMixin
    from diffusers.loaders.lora_base import (
        disable_lora_for_text_encoder,
        enable_lora_for_text_encoder,
        set_adapters_for_text_encoder,
    )

    if isinstance(model, ModelMixin):
        if names:
            model.enable_lora()
            model.set_adapters(names, weights)
        else:
            model.disable_lora()
    elif names:
        enable_lora_for_text_encoder(model)
        set_adapters_for_text_encoder(names, model, weights)
    else:
        disable_lora_for_text_encoder(model)


def lora_hashes_text(loras: list[ResolvedLora]) -> str | None:
    """The value of A1111's `Lora hashes` infotext field: "name: 0123456789ab, other: ..." (names without `:` and
    `,`, as A1111 writes them)."""
    hashes = {lora.name.translate(str.maketrans("", "", ":,")): lora.short_hash for lora in loras}
    return ", ".join(f"{name}: {short}" for name, short in hashes.items()) or None
