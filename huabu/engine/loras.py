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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from huabu.engine import checkpoints
from huabu.errors import InvalidRequest, ModelNotFound

log = logging.getLogger(__name__)

LORA_SUFFIXES = (".safetensors", ".ckpt", ".pt")
MAX_LOADED_ADAPTERS = 8  # per model; beyond this, adapters the current generation does not use are deleted


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
    stem (searching subfolders), else a LoRA file of that name in the working folder."""
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
    raise ModelNotFound(f"LoRA {name!r} not found in {loras_dir} (looked for {name}.safetensors)")


def resolve_loras(specs: Iterable[Any], loras_dir: Path, hashes: checkpoints.HashCache,
                  allow_pickle: bool = False) -> list[ResolvedLora]:
    """Files and hashes for LoRA specs (anything with name/weight/te_weight: request LoraSpecs, prompt tags)."""
    from huabu.lora.formats import a1111_lora_hash

    resolved = []
    for spec in specs:
        path = find_lora(spec.name, loras_dir)
        fmt = checkpoints.check_loadable(path, allow_pickle)
        name = path.stem if _is_path(spec.name) else spec.name
        resolved.append(ResolvedLora(name, path, float(spec.weight),
                                     None if spec.te_weight is None else float(spec.te_weight), hashes.sha256(path),
                                     a1111_lora_hash(path, hashes), fmt == checkpoints.PICKLE))
    return resolved


def apply_loras(pipe: Any, loras: list[ResolvedLora]) -> None:
    """Make exactly `loras` active in `pipe` (and every pipeline sharing its UNet and text encoders) with their
    weights, loading the files not loaded yet; no LoRA disables all adapters (the base model, exactly)."""
    if not hasattr(pipe, "load_lora_weights"):
        if loras:
            raise InvalidRequest(f"{type(pipe).__name__} cannot take LoRAs")
        return
    wanted: dict[str, tuple[ResolvedLora, float, float]] = {}
    for lora in loras:  # the same file twice adds up, as two applications of it would
        _, unet, te = wanted.get(lora.adapter_name, (lora, 0.0, 0.0))
        te_weight = lora.weight if lora.te_weight is None else lora.te_weight
        wanted[lora.adapter_name] = (lora, unet + lora.weight, te + te_weight)
    present = {name for names in pipe.get_list_adapters().values() for name in names}
    missing = [name for name in wanted if name not in present]
    stale = [name for name in present if name not in wanted]
    if missing and stale and len(present) + len(missing) > MAX_LOADED_ADAPTERS:
        pipe.delete_adapters(stale)
    for name in missing:
        _load(pipe, wanted[name][0])
    for component, names in pipe.get_list_adapters().items():
        active = [name for name in wanted if name in names]
        weights = [wanted[name][1 if component == "unet" else 2] for name in active]
        _activate(getattr(pipe, component), active, weights)


def _load(pipe: Any, lora: ResolvedLora) -> None:
    source: Any = str(lora.path)
    if lora.pickle:  # allowed by the settings in resolve_loras; read with weights_only=True
        source = checkpoints.load_state_dict(lora.path, allow_pickle=True)
    try:
        with warnings.catch_warnings():  # peft warns on every adapter after the first, which is how we use it
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            # use_safetensors=True: diffusers would otherwise retry a file it cannot parse with torch.load.
            pipe.load_lora_weights(source, adapter_name=lora.adapter_name, use_safetensors=not lora.pickle)
    except Exception as err:  # diffusers raises ValueError, KeyError, RuntimeError... for files that do not fit
        if any(lora.adapter_name in names for names in pipe.get_list_adapters().values()):
            pipe.delete_adapters([lora.adapter_name])
        text = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ModelNotFound(f"LoRA {lora.name} ({lora.path.name}) cannot be applied to this model: {text}"
                            f"{_trained_on(lora.path)}") from None


def _trained_on(path: Path) -> str:
    if checkpoints.sniff_format(path) != checkpoints.SAFETENSORS:
        return ""
    metadata = checkpoints.safetensors_metadata(path)
    base = metadata.get("ss_base_model_version") or metadata.get("ss_sd_model_name")
    return f" (it was trained on {base})" if base else ""


def _activate(model: Any, names: list[str], weights: list[float]) -> None:
    """Set one component's active adapters and weights, or disable its LoRA layers when none is wanted."""
    from diffusers import ModelMixin
    from diffusers.loaders.lora_base import (disable_lora_for_text_encoder, enable_lora_for_text_encoder,
                                             set_adapters_for_text_encoder)

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
