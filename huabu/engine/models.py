"""The model registry: what a `--model` value names, loading it once, and what the engine needs to know about it.

A model spec is, in this order: empty (the default model), the built-in name, an existing path (a diffusers
folder or a single-file checkpoint), a name in the models folder (A1111's "name [hash]" titles too), or a hub id
(only when the hub is reachable). Loaded pipelines live in a small LRU cache owned by one ModelManager, which
front ends create and pass around; there is no module-level state.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huabu.core.errors import HuabuError, ModelNotFound, UnsafeCheckpoint, first_line
from huabu.core.settings import BUILTIN_MODEL, Settings
from huabu.engine import checkpoints, single_file
from huabu.engine.bundled import BUILTIN_DIR, SHIPPED_MODELS, bundled_configs, shipped_models
from huabu.engine.denoisers import Denoiser, denoiser_folder

if TYPE_CHECKING:
    from huabu.engine.prompts.book import PromptBook

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_A1111_TITLE = re.compile(r"^(.*?)\s*\[[0-9a-fA-F]{8,64}\]$")


def looks_like_path(spec: str) -> bool:
    """Whether a ControlNet / motion module spec is meant as a path (a separator, or a leading `.` or `~`); a bare
    name is looked up in huabu's folders only, so a same-named entry in the working directory never shadows it."""
    return "/" in spec or os.sep in spec or spec.startswith((".", "~"))


def builtin_has_weights() -> bool:
    return (BUILTIN_DIR / "model_index.json").is_file() and any((BUILTIN_DIR / "unet").glob("*.safetensors"))


# A tokenizer that keeps these characters whole (a character or word vocabulary, as Chinese-CLIP's, HunyuanDiT's BERT
# or huabu-tiny-dit's, whose Chinese captions all say 背景 and often 红色) reads Chinese; CLIP's byte-level BPE cuts
# them into 11 byte pieces that SD's encoders never learnt to put together.
CHINESE_PROBE = "红色背景"
# A model folder's own prompt book (parts.yaml / styles.yaml in the shipped book's format), merged over the shipped
# one when that model is used: styles in the words a small model was trained on, or a fine-tune's trigger words.
BOOK_FOLDER = "prompt-book"


def reads_chinese(tokenizer) -> bool:
    """Whether a model with this (first) tokenizer was made to read Chinese prompts."""
    return len(tokenizer(CHINESE_PROBE, add_special_tokens=False).input_ids) <= len(CHINESE_PROBE)


@dataclass(frozen=True)
class ModelRef:
    """A resolved model spec; nothing is loaded yet."""

    spec: str
    kind: str  # "builtin" | "diffusers" | "single-file" | "hub"
    name: str  # what infotexts call it ("Model: ...")
    location: str  # folder, file or hub id
    config: str | None = None  # single files: bundled config name or diffusers folder given by the user

    @property
    def path(self) -> Path | None:
        return None if self.kind == "hub" else Path(self.location)


@dataclass(frozen=True)
class PipelineKey:
    """What a cached pipeline of a LoadedModel was built for: its kind ("txt2img", "img2img", "inpaint",
    "animatediff", "img2vid", "sparsectrl", "modelscope-img2vid") and the extra modules it holds."""

    kind: str
    motion: str = ""  # the motion module's location and disk stamp
    control: str = ""  # the SparseCtrl model's location


@dataclass
class LoadedModel:
    """A loaded pipeline plus the facts the engine needs; mode pipelines made from it share its components."""

    ref: ModelRef
    pipeline: Any  # diffusers DiffusionPipeline
    sha256: str | None
    scheduler_config: dict[str, Any]  # the model's own scheduler config, the base of every sampler
    pipelines: dict[PipelineKey, Any] = field(default_factory=dict)  # pipelines made from `pipeline` (from_pipe)
    encoders: dict[int, Any] = field(default_factory=dict)  # clip_skip -> PromptEncoder
    vae_needs_fp32: bool = False  # set once a half-precision decode overflowed (see pipelines.decode_latents)
    lora_targets: dict[str, frozenset[str]] = field(default_factory=dict)  # adapter -> components (loras.apply_loras)
    lora_active: dict[int, tuple] = field(default_factory=dict)  # component -> active adapters (loras.apply_loras)
    notices: set[str] = field(default_factory=set)  # one-time warnings already logged for this model

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def short_hash(self) -> str | None:
        return checkpoints.short_hash(self.sha256)

    @property
    def denoiser(self) -> Denoiser:
        """What kind of denoiser the pipeline has (UNet or transformer) and what follows from it."""
        return Denoiser.of(self.pipeline, self.scheduler_config)

    @property
    def vae_scale_factor(self) -> int:
        return int(self.pipeline.vae_scale_factor)

    @property
    def default_size(self) -> int:
        return self.denoiser.default_size

    @property
    def size_multiple(self) -> int:
        """What widths and heights must be multiples of (the VAE factor, times the patch size of a transformer)."""
        return self.denoiser.size_multiple

    @property
    def is_inpaint_unet(self) -> bool:
        """A 9-channel UNet (latents + mask + masked image), as in SD inpainting checkpoints."""
        return self.denoiser.is_inpaint

    @property
    def is_sdxl(self) -> bool:
        return self.denoiser.family == "sdxl"

    def notice(self, key: str, message: str) -> None:
        """Log `message` as a warning the first time `key` comes up for this model."""
        if key not in self.notices:
            self.notices.add(key)
            log.warning("%s: %s", self.name, message)

    def info(self) -> dict[str, Any]:
        denoiser = self.denoiser
        return {"name": self.name, "kind": self.ref.kind, "location": self.ref.location, "sha256": self.sha256,
                "hash": self.short_hash, "default_size": denoiser.default_size,
                "vae_scale_factor": self.vae_scale_factor, "size_multiple": denoiser.size_multiple,
                "inpaint_unet": denoiser.is_inpaint, "family": denoiser.family}


class ModelManager:
    """Resolves model specs and keeps the most recently used pipelines loaded (LRU, `settings.model_cache_size`)."""

    def __init__(self, settings: Settings, hashes: checkpoints.HashCache | None = None) -> None:
        self.settings = settings
        self.hashes = hashes or checkpoints.HashCache(settings.cache_dir / "hashes.json")
        self._cache: OrderedDict[tuple[str, str | None], LoadedModel] = OrderedDict()
        self._lock = threading.RLock()
        self._books: dict[Path | None, PromptBook] = {}  # by the model's own book folder

    # --- resolving --------------------------------------------------------------------------------------------

    def resolve(self, spec: str | None, config: str | None = None) -> ModelRef:
        """What `spec` names (see the module docstring); raises ModelNotFound with one line when nothing fits."""
        spec = (spec or "").strip() or self.settings.default_model
        if spec == BUILTIN_MODEL:
            return ModelRef(spec, "builtin", BUILTIN_MODEL, str(BUILTIN_DIR))
        if spec in shipped_models():
            return ModelRef(spec, "diffusers", spec, str(SHIPPED_MODELS[spec]))
        path = Path(spec).expanduser()
        if path.exists():
            return self._ref_for_path(spec, path, config)
        found = self._find_in_models_dir(spec)
        if found is not None:
            return self._ref_for_path(spec, found, config)
        if HUB_ID.match(spec) and path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            return ModelRef(spec, "hub", spec, spec)
        if path.suffix.lower() in CHECKPOINT_SUFFIXES or os.sep in spec or spec.startswith((".", "~")):
            raise ModelNotFound(f"model file or folder not found: {path}")
        raise ModelNotFound(f"no model named {spec!r}: not the built-in {BUILTIN_MODEL!r}, not a path, and not in "
                            f"{self.settings.models_dir} (huabu models lists what is there)")

    def _ref_for_path(self, spec: str, path: Path, config: str | None) -> ModelRef:
        path = path.resolve()
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise ModelNotFound(f"folder {path} is not a diffusers model (it has no model_index.json)")
            return ModelRef(spec, "diffusers", path.name, str(path))
        name = path.stem
        return ModelRef(spec, "single-file", name, str(path), config)

    def _find_in_models_dir(self, spec: str) -> Path | None:
        title = _A1111_TITLE.match(spec)
        wanted = (title.group(1) if title else spec).lower()
        root = self.settings.models_dir
        for ref in self._models_dir_refs():
            path = Path(ref.location)
            if wanted in (path.name.lower(), path.stem.lower(), str(path.relative_to(root)).lower()):
                return path
        return None

    def list_models(self) -> list[ModelRef]:
        """The built-in model, the other shipped ones, and every diffusers folder or checkpoint file in the models
        folder (files inside diffusers folders excluded)."""
        refs = [ModelRef(BUILTIN_MODEL, "builtin", BUILTIN_MODEL, str(BUILTIN_DIR))]
        refs += [ModelRef(name, "diffusers", name, str(path)) for name, path in shipped_models().items()]
        return refs + self._models_dir_refs()

    def _models_dir_refs(self) -> list[ModelRef]:
        root = self.settings.models_dir
        if not root.is_dir():
            return []
        folders = sorted(p.parent for p in root.rglob("model_index.json"))
        refs = [ModelRef(str(folder), "diffusers", folder.name, str(folder)) for folder in folders]
        for candidate in sorted(root.rglob("*")):
            if (candidate.is_file() and candidate.suffix.lower() in CHECKPOINT_SUFFIXES
                    and not any(folder in candidate.parents for folder in folders)):
                refs.append(ModelRef(str(candidate), "single-file", candidate.stem, str(candidate)))
        return refs

    def reads_chinese(self, spec: str | None) -> bool:
        """Whether the model `spec` names reads Chinese prompts, judged by its tokenizer alone (nothing else is
        loaded); single files and hub ids (SD, SDXL) count as English-only."""
        ref = self.resolve(spec)
        folder = Path(ref.location) / "tokenizer"
        if ref.kind not in ("diffusers", "builtin") or not folder.is_dir():
            return False
        from transformers import AutoTokenizer

        return reads_chinese(AutoTokenizer.from_pretrained(folder))

    def book_dir(self, spec: str | None) -> Path | None:
        """The prompt book folder the model `spec` names carries beside its weights, or None (also for a model
        not found: loading it says so)."""
        try:
            ref = self.resolve(spec)
        except ModelNotFound:
            return None
        folder = ref.path / BOOK_FOLDER if ref.kind in ("diffusers", "builtin") else None
        return folder if folder is not None and folder.is_dir() else None

    def prompt_book(self, spec: str | None) -> PromptBook:
        """The shipped prompt book with the model's own (`book_dir`) merged over it; read once per folder."""
        from huabu.engine.prompts.book import load_book

        folder = self.book_dir(spec)
        with self._lock:
            if folder not in self._books:
                self._books[folder] = load_book([folder] if folder else [])
            return self._books[folder]

    def find_by_hash(self, short: str) -> ModelRef | None:
        """The model whose A1111 short hash (first hex digits of sha256) is `short`, among listed models."""
        short = short.lower()
        for ref in self.list_models():
            if ref.kind == "builtin" and not builtin_has_weights():
                continue
            digest = self.model_sha256(ref)
            if digest and digest.startswith(short):
                return ref
        return None

    def model_sha256(self, ref: ModelRef) -> str | None:
        """sha256 of a single file; for a folder, of its UNet's (or transformer's) weights (what makes its images
        what they are; the first file of sharded weights)."""
        if ref.kind == "single-file":
            return self.hashes.sha256(ref.location)
        if ref.kind in ("diffusers", "builtin"):
            folder = Path(ref.location)
            weights = sorted((folder / denoiser_folder(folder)).glob("*.safetensors"))
            return self.hashes.sha256(weights[0]) if weights else None
        return None

    # --- loading ----------------------------------------------------------------------------------------------

    def load(self, spec: str | None, config: str | None = None) -> LoadedModel:
        """The loaded model for `spec`, from the cache when it is there."""
        ref = self.resolve(spec, config)
        key = (ref.location, ref.config)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            while len(self._cache) >= self.settings.model_cache_size:
                self._cache.popitem(last=False)  # drop references first so memory can be reused
            loaded = self._load_uncached(ref)
            self._cache[key] = loaded
            return loaded

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._cache.values())

    def unload_all(self) -> None:
        with self._lock:
            self._cache.clear()

    def _load_uncached(self, ref: ModelRef) -> LoadedModel:
        from huabu.engine.devices import resolve_device, resolve_dtype
        from huabu.engine.memory import apply_memory_options

        device = resolve_device(self.settings.device)
        dtype = resolve_dtype(self.settings.dtype, device)
        if ref.kind == "builtin" and not builtin_has_weights():
            raise ModelNotFound(f"built-in model {BUILTIN_MODEL} has no weights in this checkout yet")
        if ref.kind == "hub":
            pipe = self._load_hub(ref.location, dtype)
        elif ref.kind == "single-file":
            pipe = self._load_single_file(Path(ref.location), ref.config, dtype)
        else:
            pipe = self._load_folder(Path(ref.location), dtype)
        apply_memory_options(pipe, self.settings, device)
        if Path(ref.location) in (BUILTIN_DIR, *SHIPPED_MODELS.values()):
            # huabu-tiny's VAE (huabu-tiny-dit shares it) saw only 64 px images: over a larger latent its mid-block
            # attention spreads thinner, and an encode-decode round trip at 128 px is off by 31 levels on average
            # against 17 at 64 px (docs/training-notes.md, huabu-tiny-2x). diffusers' tiling keeps it on 64 px
            # tiles (16.6 levels) and leaves 64 px images untouched.
            pipe.vae.enable_tiling()
        pipe.set_progress_bar_config(disable=True)
        loaded = LoadedModel(ref, pipe, self.model_sha256(ref), dict(pipe.scheduler.config))
        log.info("loaded %s (%s) on %s as %s", ref.name, ref.kind, device, dtype)
        return loaded

    def _load_folder(self, folder: Path, dtype) -> Any:
        from diffusers import DiffusionPipeline

        kwargs = folder_load_kwargs(folder)
        try:
            return DiffusionPipeline.from_pretrained(
                folder, dtype=dtype, local_files_only=True,
                # Folders with only pickle (.bin) weights are refused unless pickle is allowed.
                use_safetensors=None if self.settings.allow_unsafe_pickle else True, **kwargs)
        except (OSError, ValueError) as err:
            for weights in sorted(folder.glob("*/*.safetensors")):  # a damaged file is named, not taken for pickle
                checkpoints.check_safetensors(weights, f"{folder.name}/{weights.relative_to(folder).as_posix()}")
            if ".bin" in str(err) or "safetensors" in str(err):
                raise UnsafeCheckpoint(f"{folder} holds no .safetensors weights (only pickle files?); pass "
                                       f"--allow-unsafe-pickle if you trust it") from None
            raise ModelNotFound(f"cannot load diffusers folder {folder}: {first_line(err)}") from None

    def _load_hub(self, repo_id: str, dtype) -> Any:
        from diffusers import DiffusionPipeline
        from huggingface_hub import constants

        if self.settings.hub_offline or constants.HF_HUB_OFFLINE:
            raise ModelNotFound(f"model {repo_id!r} is not a local path and the hub is offline (HF_HUB_OFFLINE=1); "
                                f"download it first or pass a folder")
        try:
            return DiffusionPipeline.from_pretrained(repo_id, dtype=dtype, use_safetensors=True,
                                                     safety_checker=None, requires_safety_checker=False)
        except Exception as err:  # network and repository errors: many types, all reported the same way
            raise ModelNotFound(f"cannot load {repo_id!r} from the hub: {first_line(err)}") from None

    def _load_single_file(self, path: Path, config: str | None, dtype) -> Any:
        fmt = checkpoints.check_loadable(path, self.settings.allow_unsafe_pickle)
        metadata = checkpoints.safetensors_metadata(path) if fmt == checkpoints.SAFETENSORS else {}
        state = checkpoints.load_state_dict(path, self.settings.allow_unsafe_pickle)
        config_dir, config_name = single_file.config_for(path, state, metadata, config)
        try:
            return single_file.assemble(state, config_dir, dtype, path.name)
        except HuabuError:
            raise
        except Exception as err:  # shape mismatches and missing keys, raised as several exception types
            raise ModelNotFound(f"{path.name} does not fit the {config_name} config ({first_line(err)}); pass "
                                f"--model-config with a bundled config ({', '.join(bundled_configs())}) or a "
                                f"diffusers folder") from None


def folder_load_kwargs(folder: Path) -> dict[str, Any]:
    """`from_pretrained` arguments a diffusers folder loads with: its absent components and no NSFW checker."""
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    return {**_absent_components(index), **_no_safety_checker(index)}


def _absent_components(model_index: dict[str, Any]) -> dict[str, None]:
    """Components a folder was saved without (`[null, null]`, e.g. SD3 without its T5 encoder): diffusers loads
    such a folder only when they are passed as None."""
    return {name: None for name, spec in model_index.items()
            if not name.startswith("_") and isinstance(spec, list) and len(spec) == 2 and spec[0] is None}


def _no_safety_checker(model_index: dict[str, Any]) -> dict[str, Any]:
    """Pipeline kwargs that leave out the NSFW checker (huabu does not filter images) where the class has one."""
    if "safety_checker" not in model_index:
        return {}
    return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
