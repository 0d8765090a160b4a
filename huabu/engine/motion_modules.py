"""Motion modules (AnimateDiff MotionAdapters) and SparseCtrl models: finding, loading and hashing them.

A motion module is a diffusers MotionAdapter folder, a single file (diffusers or original AnimateDiff keys, judged
by its bytes), or a hub id. A module folder may also hold what was trained with it: a text LoRA and motion words.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huabu.core.errors import InvalidRequest, ModelNotFound, UnsafeCheckpoint, first_line
from huabu.core.settings import Settings
from huabu.engine import checkpoints
from huabu.engine.loras import ResolvedLora, resolve_loras
from huabu.engine.models import HUB_ID, ModelRef, looks_like_path
from huabu.engine.prompts.syntax import LoraRef

MOTION_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# What a motion-module folder may hold beside the adapter, trained with it: motion-word layers (and word rows) of
# huabu.engine.motion_words, and a LoRA of the image model's cross-attention (MotionTrainConfig.text_lora_rank).
MOTION_WORDS_FILE = "motion_words.safetensors"
TEXT_LORA_FILE = "text_lora.safetensors"


@dataclass(frozen=True)
class MotionModuleRef:
    name: str  # what infotexts call it
    location: str  # folder, file or hub id
    kind: str  # "folder" | "file" | "hub"


def list_motion_modules(motion_dir: Path) -> list[MotionModuleRef]:
    """MotionAdapter folders (config.json) and checkpoint files directly inside the motion folder."""
    if not motion_dir.is_dir():
        return []
    found = []
    for entry in sorted(motion_dir.iterdir()):
        if entry.is_dir() and (entry / "config.json").is_file():
            found.append(MotionModuleRef(entry.name, str(entry), "folder"))
        elif entry.is_file() and entry.suffix.lower() in MOTION_SUFFIXES:
            found.append(MotionModuleRef(entry.stem, str(entry), "file"))
    return found


def resolve_motion_module(spec: str | None, settings: Settings, model: ModelRef | None = None) -> MotionModuleRef:
    """What `spec` names: an existing folder or file, a name in the motion folder, or a hub id. None picks the model
    folder's own `motion_adapter/`, else the only module in the motion folder."""
    available = list_motion_modules(settings.motion_dir)
    if not spec:
        own = Path(model.location) / "motion_adapter" if model is not None and model.path is not None else None
        if own is not None and (own / "config.json").is_file():
            return MotionModuleRef(f"{model.name}/motion_adapter", str(own), "folder")
        if len(available) == 1:
            return available[0]
        names = ", ".join(ref.name for ref in available)
        held = f"holds {names}" if available else "is empty"
        raise ModelNotFound(f"no motion module given: pass --motion-module NAME (the motion folder "
                            f"{settings.motion_dir} {held})")
    path = Path(spec).expanduser()
    if looks_like_path(spec) and path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"folder {path} is not a diffusers MotionAdapter (it has no config.json)")
        return MotionModuleRef(path.name, str(path.resolve()), "folder")
    if looks_like_path(spec) and path.is_file():
        return MotionModuleRef(path.stem, str(path.resolve()), "file")
    wanted = spec.lower()
    for ref in available:
        if wanted in (ref.name.lower(), Path(ref.location).name.lower()):
            return ref
    if HUB_ID.match(spec) and path.suffix.lower() not in MOTION_SUFFIXES:
        return MotionModuleRef(spec, spec, "hub")
    names = ", ".join(ref.name for ref in available) or "nothing"
    raise ModelNotFound(f"unknown motion module {spec!r}: not a folder or file, and the motion folder "
                        f"{settings.motion_dir} holds {names}")


def motion_text_lora(ref: MotionModuleRef, loras_dir: Path, hashes: checkpoints.HashCache) -> ResolvedLora | None:
    """The cross-attention LoRA trained with a motion module (TEXT_LORA_FILE in its folder), at weight 1, or None."""
    path = _beside_module(ref, TEXT_LORA_FILE)
    if path is None:
        return None
    return resolve_loras([LoraRef(str(path), 1.0)], loras_dir, hashes)[0]


def _beside_module(ref: MotionModuleRef, name: str) -> Path | None:
    """The file `name` trained with a motion module and kept in its folder, if the module is a folder that has it."""
    path = Path(ref.location) / name
    return path if ref.kind == "folder" and path.is_file() else None


def load_motion_adapter(ref: MotionModuleRef, settings: Settings):
    """The MotionAdapter `ref` names. Single files are judged by their bytes (pickle refused unless allowed) and
    may hold diffusers keys or the original AnimateDiff keys."""
    from diffusers import MotionAdapter

    if ref.kind == "file":
        path = Path(ref.location)
        fmt = checkpoints.check_loadable(path, settings.allow_unsafe_pickle)
        metadata = checkpoints.safetensors_metadata(path) if fmt == checkpoints.SAFETENSORS else {}
        return motion_adapter_from_state_dict(checkpoints.load_state_dict(path, settings.allow_unsafe_pickle),
                                              metadata, path.name)
    if ref.kind == "hub":
        from huggingface_hub import constants

        if settings.hub_offline or constants.HF_HUB_OFFLINE:
            raise ModelNotFound(f"motion module {ref.location!r} is not a local folder or file and the hub is offline "
                                f"(HF_HUB_OFFLINE=1); download it first or put it in {settings.motion_dir}")
        try:
            return MotionAdapter.from_pretrained(ref.location, use_safetensors=True)
        except Exception as err:  # network and repository errors, all reported the same way
            raise ModelNotFound(f"cannot load motion module {ref.location!r} from the hub: {first_line(err)}") from None
    try:
        return MotionAdapter.from_pretrained(ref.location, local_files_only=True,
                                             use_safetensors=None if settings.allow_unsafe_pickle else True)
    except (OSError, ValueError) as err:
        if ".bin" in str(err) or "safetensors" in str(err):
            raise UnsafeCheckpoint(f"{ref.location} holds no .safetensors weights (only pickle files?); pass "
                                   f"--allow-unsafe-pickle if you trust it") from None
        raise ModelNotFound(f"cannot load motion module {ref.location}: {first_line(err)}") from None


def motion_adapter_from_state_dict(state: dict, metadata: dict[str, str] | None = None, label: str = "file"):
    """A MotionAdapter built from its weights alone. The architecture is read off the keys and shapes (diffusers'
    converter maps original AnimateDiff keys first); a `huabu_config` metadata entry (JSON), as huabu writes, wins.
    Head count and norm groups leave no trace in the weights: AnimateDiff's 8 heads and 32 groups are assumed."""
    from diffusers import MotionAdapter
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    # The position table's length is the module's frame limit (24 for AnimateDiff v1, 32 for v2); diffusers'
    # converter drops the original tables (MotionAdapter rebuilds the same sinusoids), so read it first.
    table = next((v for k, v in state.items() if k.endswith(("pos_encoder.pe", "pos_embed.pe"))), None)
    state = convert_animatediff_checkpoint_to_diffusers(state)
    if metadata and "huabu_config" in metadata:
        config = json.loads(metadata["huabu_config"])
    else:
        config = _infer_motion_config(state, label, int(table.shape[1]) if table is not None else 32)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    if config.get("conv_in_channels"):
        raise InvalidRequest(f"{label} is a PIA motion module (9-channel input); huabu runs AnimateDiff ones")
    adapter = MotionAdapter(**config)
    missing, unexpected = adapter.load_state_dict(state, strict=False)
    # Original checkpoints leave out the sinusoidal position tables, which MotionAdapter rebuilds itself.
    missing = [k for k in missing if not k.endswith("pos_embed.pe")]
    if missing or unexpected:
        raise ModelNotFound(f"{label} does not fit a motion module of its own shape "
                            f"({len(missing)} missing, {len(unexpected)} unexpected weights, e.g. "
                            f"{(missing + unexpected)[0]})")
    return adapter


def _infer_motion_config(state: dict, label: str, max_frames: int) -> dict[str, Any]:
    def count(prefix: str) -> int:
        indices = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
        return max(indices) + 1 if indices else 0

    blocks = count("down_blocks.")
    if not blocks or "down_blocks.0.motion_modules.0.proj_in.weight" not in state:
        raise ModelNotFound(f"{label} is not an AnimateDiff motion module (no down_blocks.*.motion_modules weights)")
    channels = [int(state[f"down_blocks.{i}.motion_modules.0.proj_in.weight"].shape[0]) for i in range(blocks)]
    mid = any(k.startswith("mid_block.") for k in state)
    return {
        "block_out_channels": channels,
        "motion_layers_per_block": count("down_blocks.0.motion_modules."),
        "motion_transformer_layers_per_block": count("down_blocks.0.motion_modules.0.transformer_blocks."),
        "use_motion_mid_block": mid,
        "motion_mid_block_layers_per_block": count("mid_block.motion_modules.") if mid else 1,
        "motion_transformer_layers_per_mid_block": count("mid_block.motion_modules.0.transformer_blocks.")
        if mid
        else 1,
        "motion_max_seq_length": max_frames,
        "motion_num_attention_heads": 8,
        "motion_norm_num_groups": 32,
    }


def motion_module_hash(ref: MotionModuleRef, hashes: checkpoints.HashCache) -> str | None:
    """A1111-style short hash: sha256 of the file, or of a folder's weights file."""
    if ref.kind == "file":
        return checkpoints.short_hash(hashes.sha256(ref.location))
    if ref.kind == "folder":
        weights = sorted(Path(ref.location).glob("*.safetensors"))
        return checkpoints.short_hash(hashes.sha256(weights[0])) if weights else None
    return None


def load_sparse_control(spec: str, settings: Settings) -> tuple[str, str, Any]:
    """(name, location, SparseControlNetModel) for a folder, a folder name in the ControlNet folder, or a hub id."""
    from diffusers import SparseControlNetModel

    path = Path(spec).expanduser() if looks_like_path(spec) else settings.controlnet_dir / spec
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"folder {path} is not a diffusers SparseCtrl model (it has no config.json)")
        try:
            model = SparseControlNetModel.from_pretrained(path, local_files_only=True, use_safetensors=None
                                                          if settings.allow_unsafe_pickle else True)
        except (OSError, ValueError) as err:
            raise ModelNotFound(f"cannot load SparseCtrl model {path}: {first_line(err)}") from None
        return path.name, str(path.resolve()), model
    if not HUB_ID.match(spec):
        raise ModelNotFound(f"SparseCtrl model {spec!r} not found: not a folder, and not in {settings.controlnet_dir}")
    from huggingface_hub import constants

    if settings.hub_offline or constants.HF_HUB_OFFLINE:
        raise ModelNotFound(f"SparseCtrl model {spec!r} is not a local folder and the hub is offline "
                            f"(HF_HUB_OFFLINE=1); download it first or pass a folder")
    try:
        return spec, spec, SparseControlNetModel.from_pretrained(spec, use_safetensors=True)
    except Exception as err:  # network and repository errors
        raise ModelNotFound(f"cannot load SparseCtrl model {spec!r} from the hub: {first_line(err)}") from None



def motion_words_file(ref: MotionModuleRef) -> Path | None:
    """The motion-word layers trained with a motion module (huabu.engine.motion_words), beside it in its folder."""
    return _beside_module(ref, MOTION_WORDS_FILE)


def disk_stamp(motion: MotionModuleRef) -> str:
    """Size and modification time of a local module's files: a file written again gets a new stamp."""
    if motion.kind == "hub":
        return ""
    path = Path(motion.location)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return ";".join(f"{p.name}:{st.st_size}:{st.st_mtime_ns}" for p in files for st in (p.stat(),))
