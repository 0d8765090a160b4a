"""ControlNet at inference: which ControlNet a unit names, loading it once, turning the unit's image into a control
map of the output size, and running diffusers' ControlNet pipelines built with `from_pipe` around the loaded
model (same denoiser, VAE and text encoders; the ControlNets ride in the family's multi-ControlNet container).

A unit's `model` is a path (diffusers folder or single file), a name in `Settings.controlnet_dir` or among the
model's own ControlNets (A1111's "name [hash]" too, found by hash when the name is not there), or empty: then the
model's own ControlNet for the module, else the folder's one ControlNet whose name holds the module's name
(canny -> "control_v11p_sd15_canny"). A model folder's own ControlNets are diffusers folders beside it named
`<folder>-controlnet-<module>`, as huabu-tiny ships huabu-tiny-controlnet-canny. Single files in the original
layout are read with `ControlNetModel.from_single_file`, safely (format judged by the bytes, pickle only when
allowed), with a config derived from the base model's UNet plus the file's own control-image embedding: the two
must match anyway, and it keeps loading offline. SD3 and FLUX models take their own ControlNet classes
(huabu.engine.controlnet_families), from diffusers folders.

Per unit, as sd-webui-controlnet: weight (conditioning scale), guidance start/end (fractions of the steps), resize
mode, processor resolution or "pixel perfect", thresholds (Canny low/high) and control mode (see control_modes).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from huabu.core.errors import BadImage, HuabuError, InvalidRequest, ModelNotFound, UnsafeCheckpoint, first_line
from huabu.core.requests import ControlUnit, TextBox
from huabu.core.settings import Settings
from huabu.core.text_boxes import GLYPH, MAX_WORD_LENGTH, place_words, quoted_words, with_placeholders
from huabu.engine import checkpoints
from huabu.engine.controlnet_families import (
    CONTROLNET_CLASSES,
    class_problem,
    controlnet_class,
    multi_controlnet,
    transformer_fit_problem,
)
from huabu.engine.denoisers import Denoiser
from huabu.engine.extensions import Extension
from huabu.engine.images import load_image
from huabu.engine.models import LoadedModel, looks_like_path
from huabu.engine.pipelines import pipeline_mode

log = logging.getLogger(__name__)

CONTROLNET_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
ANNOTATORS = "annotators"  # preprocessor weights live here inside the ControlNet folder, not ControlNets
# Words that name a module's ControlNets in file names (sd-webui-controlnet's naming: control_v11p_sd15_canny).
MODULE_WORDS = {
    "canny": ("canny",), "softedge": ("softedge", "hed"), "softedge_hed": ("softedge", "hed"),
    "softedge_gradient": ("softedge", "hed"), "depth": ("depth",), "pose": ("openpose", "pose"),
    "pose_json": ("openpose", "pose"), "color": ("color", "colour"), "glyph": ("glyph", "anytext"),
}
# Preprocessors that take annotator weights, and the name find_annotator_weights knows them by.
_ANNOTATOR_KINDS = {"softedge": "softedge_hed", "softedge_hed": "softedge_hed", "pose": "pose"}
DEPTH_ANNOTATOR = "depth"  # a transformers depth model folder (DPT, Depth-Anything) inside the annotators folder
# What a preprocessor needs in the annotators folder ({} in the text) when it has no weight-free fallback.
NEEDS_WEIGHTS = {
    "depth": "depth needs a depth model: put a transformers depth model folder (DPT or Depth-Anything) at "
             "{}/" + DEPTH_ANNOTATOR,
    "pose": "pose needs OpenPose body weights: put body_pose_model.safetensors in {}",
    "softedge_hed": "softedge_hed needs HED weights: put ControlNetHED.safetensors in {}",
}
_A1111_TITLE = re.compile(r"^(.*?)\s*\[([0-9a-fA-F]{8,64})\]$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/=\s]+$")


def legacy_hash(path: str | os.PathLike) -> str:
    """A1111's old 8-hex-digit checkpoint hash (sha256 of 64 KiB at offset 1 MiB), which sd-webui-controlnet shows
    in model titles: "control_v11p_sd15_canny [d14c016b]"."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(0x100000)
        digest.update(f.read(0x10000))
    return digest.hexdigest()[:8]


@dataclass(frozen=True)
class ControlNetRef:
    """A ControlNet on disk: a diffusers folder or a single file; nothing loaded yet."""

    name: str
    location: str
    kind: str  # "diffusers" | "single-file"
    short_hash: str

    @property
    def title(self) -> str:
        return f"{self.name} [{self.short_hash}]"


@dataclass
class CheckedUnit:
    """An enabled unit whose module and image were checked (the img2img/inpaint input when it has none)."""

    index: int  # position among the request's units (disabled ones included), for messages
    unit: ControlUnit
    preprocessor: str  # canonical huabu.engine.control module name
    image: Image.Image | None  # None for glyph units: their map is drawn from `words`
    # Glyph units: each (word, box) and the canvas (the request's output size) the boxes are in.
    words: tuple[tuple[str, tuple[int, ...]], ...] = ()
    canvas: tuple[int, int] = (0, 0)


def check_units(units: list[ControlUnit], init_image: Image.Image | None = None) -> list[CheckedUnit]:
    """The enabled units, with their images read and modules known; one-line errors for anything unusable.

    A unit without an image uses `init_image`, the img2img/inpaint input as loaded (before it is resized to the
    output), as sd-webui-controlnet does. A glyph unit takes no image: its words are placed by `with_words` once
    the output size is known. Called before the model loads, so bad input fails fast."""
    from huabu.engine.control.registry import get_preprocessor

    checked = []
    for index, unit in enumerate(units):
        if not unit.enabled:
            continue
        preprocessor = get_preprocessor(unit.module).name
        if preprocessor == GLYPH:
            image = None
        elif unit.image:
            image = unit_image(unit.image, f"ControlNet unit {index} image")
        elif init_image is not None:
            image = init_image
        else:
            raise InvalidRequest(f"ControlNet unit {index} ({unit.module}) has no image: give it one (image, or "
                                 f"--control {unit.module}:IMAGE); only img2img/inpaint units may use the input image")
        checked.append(CheckedUnit(index, unit, preprocessor, image))
    return checked


def with_words(units: list[CheckedUnit], request: Any, width: int, height: int) -> tuple[list[CheckedUnit], list]:
    """The units with each glyph unit's words placed, and the request's text boxes as used: every quoted word of the
    prompt with its box (given, else laid out by huabu.core.text_boxes.place_words for width x height)."""
    given = list(getattr(request, "text_boxes", []))
    words = [box.text for box in given] + quoted_words(request.prompt)[len(given):]
    glyph_units = [checked for checked in units if checked.preprocessor == GLYPH]
    if not glyph_units:
        return units, given
    if not words:
        raise InvalidRequest(f"ControlNet unit {glyph_units[0].index} (glyph) has no words to draw: quote them in the "
                             f'prompt (a sign that says "画布"), optionally with --text-box X0,Y0,X1,Y1 per word')
    long = next((word for word in words if len(word) > MAX_WORD_LENGTH), None)
    if long is not None:
        raise InvalidRequest(f"quoted word {long[:20]!r}... is longer than {MAX_WORD_LENGTH} characters; a glyph unit "
                             f"draws words, not paragraphs")
    boxes = [given[i].box if i < len(given) and given[i].box else None for i in range(len(words))]
    placed = [TextBox(text=word, box=list(box)) for word, box in place_words(list(zip(words, boxes)), width, height)]
    drawn = tuple((box.text, tuple(box.box)) for box in placed)
    return [replace(c, words=drawn, canvas=(width, height)) if c.preprocessor == GLYPH else c for c in units], placed


def encoded_words(text: str, units: list[CheckedUnit]) -> str:
    """The prompt as encoded beside a glyph unit: each quoted word a placeholder (AnyText's way). The unit draws the
    words; a text encoder that cannot spell them only loses the rest of the caption to their pieces (figures in
    docs/training-notes.md, the glyph ControlNet)."""
    return with_placeholders(text) if any(unit.preprocessor == GLYPH for unit in units) else text


def unit_image(ref: str, what: str) -> Image.Image:
    """A path or data URL; also the bare base64 that sd-webui-controlnet's API clients send."""
    if not ref.startswith("data:") and len(ref) > 256 and _BASE64.match(ref) and not Path(ref[:200]).exists():
        ref = "data:image/png;base64," + "".join(ref.split())
    return load_image(ref, what)


class ControlNetManager:
    """Finds ControlNets (paths or names in `settings.controlnet_dir`) and keeps the last few loaded (LRU)."""

    def __init__(self, settings: Settings, max_loaded: int = 3) -> None:
        self.settings = settings
        self.max_loaded = max_loaded
        self._cache: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
        self._lock = threading.RLock()

    # --- finding -----------------------------------------------------------------------------------------------

    def list_controlnets(self) -> list[ControlNetRef]:
        """Every diffusers ControlNet folder and checkpoint file under the ControlNet folder (annotators aside)."""
        root = self.settings.controlnet_dir
        if not root.is_dir():
            return []
        skip = root / ANNOTATORS
        folders = sorted(p.parent for p in root.rglob("config.json")
                         if skip not in p.parents and _is_controlnet_config(p))
        refs = [self._ref_for_path(folder, check=False) for folder in folders]
        for candidate in sorted(root.rglob("*")):
            if (candidate.is_file() and candidate.suffix.lower() in CONTROLNET_SUFFIXES and skip not in
                    candidate.parents and not any(folder in candidate.parents for folder in folders)):
                refs.append(self._ref_for_path(candidate, check=False))
        return refs

    def own_controlnets(self, model_path: Path | None) -> list[ControlNetRef]:
        """The ControlNets shipped with a model folder: `<folder>-controlnet-*` diffusers folders beside it."""
        if model_path is None or not model_path.is_dir():
            return []
        found = sorted(model_path.parent.glob(f"{model_path.name}-controlnet-*"))
        return [self._ref_for_path(p, check=False) for p in found if _is_controlnet_config(p / "config.json")]

    def resolve(self, spec: str, module: str, denoiser: Denoiser | None = None,
                model_path: Path | None = None) -> ControlNetRef:
        """The ControlNet a unit's `model` names, or for an empty one, the default for `module` (see module doc):
        among several, those that fit `denoiser`; `model_path` is the model's folder, whose own ControlNets come
        first."""
        spec = (spec or "").strip()
        own = self.own_controlnets(model_path)
        if not spec:
            return self._default_for(module, denoiser, own)
        path = Path(spec).expanduser()
        if looks_like_path(spec) and path.exists():
            return self._ref_for_path(path)
        title = _A1111_TITLE.match(spec)
        wanted, short = (title.group(1), title.group(2).lower()) if title else (spec, None)
        root = self.settings.controlnet_dir
        available = self.list_controlnets() + own
        for ref in available:
            location = Path(ref.location)
            names = {location.name.lower(), location.stem.lower()}
            if location.is_relative_to(root.resolve()):
                names.add(str(location.relative_to(root.resolve())).lower())
            if wanted.lower() in names:
                return ref
        if short:
            for ref in available:
                if ref.short_hash.startswith(short[:8]):
                    return ref
        raise ModelNotFound(f"ControlNet {spec!r} not found: not a path and not in {root}"
                            + (f" (it holds: {', '.join(r.name for r in available)})" if available else "")
                            + ("; for a file or folder here, write ./" + spec if not looks_like_path(spec) else ""))

    def _default_for(self, module: str, denoiser: Denoiser | None,
                     own: list[ControlNetRef] | None = None) -> ControlNetRef:
        from huabu.engine.control.registry import get_preprocessor

        name = get_preprocessor(module).name
        words = MODULE_WORDS.get(name)
        if not words:
            raise InvalidRequest(f"module {module!r} has no default ControlNet: name one (model, or "
                                 f"--controlnet-model)")
        mine = _named_for(own or [], words)
        if len(mine) == 1:
            log.info("ControlNet for %s: %s (the model's own)", name, mine[0].location)
            return mine[0]
        root = self.settings.controlnet_dir
        matches = _named_for(self.list_controlnets(), words)
        if len(matches) > 1 and denoiser is not None:
            matches = [ref for ref in matches if _may_fit(ref, denoiser)]
        if len(matches) == 1:
            log.info("ControlNet for %s: %s", name, matches[0].location)
            return matches[0]
        if not matches:
            raise ModelNotFound(f"no ControlNet for {name} in {root} (looked for a name holding "
                                f"{' or '.join(words)}); put one there or name it (model / --controlnet-model)")
        raise InvalidRequest(f"several ControlNets in {root} could serve {name} "
                             f"({', '.join(ref.name for ref in matches)}); name one (model / --controlnet-model)")

    def _ref_for_path(self, path: Path, check: bool = True) -> ControlNetRef:
        """A ref for a folder or file; `check` refuses what cannot be loaded (listing a folder checks nothing, so one
        pickle file there does not stop the others from being used)."""
        path = path.resolve()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelNotFound(f"folder {path} is not a diffusers ControlNet (it has no config.json)")
            weights = _folder_weights(path)
            if weights is None:
                raise ModelNotFound(f"ControlNet folder {path} holds no weights file")
            ref = ControlNetRef(path.name, str(path), "diffusers", legacy_hash(weights))
        else:
            ref = ControlNetRef(path.stem, str(path), "single-file", legacy_hash(path))
        if check:
            self.check_loadable(ref)
        return ref

    def check_loadable(self, ref: ControlNetRef) -> None:
        """Refuse pickle weights unless allowed (judged by the bytes for files; folders need .safetensors)."""
        if ref.kind == "single-file":
            checkpoints.check_loadable(ref.location, self.settings.allow_unsafe_pickle)
        elif _folder_weights(Path(ref.location)).suffix != ".safetensors" and not self.settings.allow_unsafe_pickle:
            raise UnsafeCheckpoint(f"{ref.location} holds no .safetensors weights (only pickle files?); pass "
                                   f"--allow-unsafe-pickle if you trust it")

    # --- loading -------------------------------------------------------------------------------------------------

    def load(self, ref: ControlNetRef, model: LoadedModel) -> Any:
        """The ControlNet of `ref` (the class the model's family takes) on the model's device and dtype, checked to
        fit the model."""
        pipe, denoiser = model.pipeline, model.denoiser
        key = (ref.location, str(pipe.device), str(pipe.dtype))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                net = self._cache[key]
            else:
                self.check_loadable(ref)
                if ref.kind == "diffusers":  # a folder's config tells before its weights are read
                    config = json.loads((Path(ref.location) / "config.json").read_text(encoding="utf-8"))
                    _check_fits(ref, config, denoiser)
                while len(self._cache) >= self.max_loaded:
                    self._cache.popitem(last=False)
                net = self._load_uncached(ref, denoiser, pipe.dtype).to(pipe.device).eval()
                self._cache[key] = net
        _check_fits(ref, {**net.config, "_class_name": type(net).__name__}, denoiser)
        return net

    def _load_uncached(self, ref: ControlNetRef, denoiser: Denoiser, dtype) -> Any:
        import torch
        from diffusers import ControlNetModel

        load_dtype = None if dtype == torch.float32 else dtype  # casting to fp32 only makes diffusers warn
        if ref.kind == "diffusers":
            try:
                return controlnet_class(denoiser.family).from_pretrained(
                    ref.location, dtype=load_dtype, local_files_only=True,
                    use_safetensors=None if self.settings.allow_unsafe_pickle else True)
            except (OSError, ValueError) as err:
                raise ModelNotFound(f"cannot load ControlNet folder {ref.location}: {first_line(err)}") from None
        from huabu.engine.control.convert import for_diffusers_reader

        if denoiser.is_transformer:
            raise InvalidRequest(f"ControlNet {Path(ref.location).name} is a single file; {denoiser.label} ControlNets "
                                 f"load from diffusers folders (config.json and weights)")
        state = checkpoints.load_state_dict(ref.location, self.settings.allow_unsafe_pickle)
        try:
            state = for_diffusers_reader(state)
            config = controlnet_config(denoiser.config, state)
            with tempfile.TemporaryDirectory(prefix="huabu-controlnet-") as folder:
                Path(folder, "config.json").write_text(json.dumps(config), encoding="utf-8")
                return ControlNetModel.from_single_file(state, config=folder, local_files_only=True, dtype=load_dtype)
        except HuabuError:
            raise
        except Exception as err:  # key/shape mismatches surface as several exception types
            raise ModelNotFound(f"ControlNet {Path(ref.location).name} does not fit this model's UNet or is not a "
                                f"ControlNet ({first_line(err)})") from None

    # --- a request's plan --------------------------------------------------------------------------------------

    def plan(self, units: list[CheckedUnit], model: LoadedModel) -> ControlPlan:
        """Resolve and load each unit's ControlNet for `model`."""
        refs = [self.resolve(u.unit.model, u.preprocessor, model.denoiser, model.ref.path) for u in units]
        nets = [self.load(ref, model) for ref in refs]
        return ControlPlan(units, refs, nets, self.settings.controlnet_dir / ANNOTATORS,
                           self.settings.allow_unsafe_pickle, family=model.denoiser.family)


def run_preprocessor(name: str, image: Image.Image, resolution: int | None, threshold_a: float | None,
                     threshold_b: float | None, annotators_dir: Path, allow_unsafe_pickle: bool = False,
                     device: Any = "cpu", what: str = "ControlNet unit") -> Image.Image:
    """Preprocessor `name` run with the options an sd-webui-controlnet unit carries (processor_res, canny's
    thresholds) and its annotator weights from `annotators_dir`: what generation and /controlnet/detect share.
    `what` names the unit in errors."""
    from huabu.engine.control.canny import DEFAULT_HIGH, DEFAULT_LOW
    from huabu.engine.control.images import MAX_RESOLUTION, MIN_RESOLUTION
    from huabu.engine.control.registry import get_preprocessor, preprocess

    options: dict[str, Any] = {}
    takes = get_preprocessor(name).options
    if name != "none" and "resolution" in takes and resolution is not None:
        options["resolution"] = min(max(resolution, MIN_RESOLUTION), MAX_RESOLUTION)
    if name == "canny":
        options["low"] = DEFAULT_LOW if threshold_a is None else threshold_a
        options["high"] = DEFAULT_HIGH if threshold_b is None else threshold_b
    weights = annotator_weights(name, annotators_dir, allow_unsafe_pickle)
    if weights is not None:
        options["weights"] = weights
    elif name in NEEDS_WEIGHTS:  # a unit cannot carry a depth map or keypoints
        raise InvalidRequest(f"{what}: {NEEDS_WEIGHTS[name].format(annotators_dir)}, or send a ready {name} map "
                             f"with module none")
    if "allow_unsafe_pickle" in takes:
        options["allow_unsafe_pickle"] = allow_unsafe_pickle
    if "device" in takes:
        options["device"] = device
    try:
        return preprocess(name, image, **options)
    except TypeError as err:  # a preprocessor that needs an option a unit cannot carry (keypoints, weights)
        raise InvalidRequest(f"{what}: {name} cannot run from a unit ({err}); preprocess the image first "
                             f"(huabu preprocess) and use module none") from None


def annotator_weights(name: str, annotators_dir: Path, allow_unsafe_pickle: bool = False) -> Path | None:
    """What preprocessor `name` loads from the annotators folder: its HED or OpenPose weights file, or the depth
    model folder; None when that is not there, or the preprocessor takes no weights."""
    from huabu.engine.control.weights import find_annotator_weights

    if name in _ANNOTATOR_KINDS:
        return find_annotator_weights(annotators_dir, _ANNOTATOR_KINDS[name], allow_unsafe_pickle)
    if name == "depth" and (annotators_dir / DEPTH_ANNOTATOR / "config.json").is_file():
        return annotators_dir / DEPTH_ANNOTATOR
    return None


def _named_for(refs: list[ControlNetRef], words: tuple[str, ...]) -> list[ControlNetRef]:
    """The refs whose name holds one of `words`; those holding it as a whole word (`x-canny`, not `canny2`) if any."""
    loose = [ref for ref in refs if any(word in ref.name.lower() for word in words)]
    whole = [ref for ref in loose if set(re.split(r"[^a-z0-9]+", ref.name.lower())) & set(words)]
    return whole or loose


def _is_controlnet_config(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("_class_name") in CONTROLNET_CLASSES
    except (OSError, ValueError, AttributeError):
        return False


def _folder_weights(folder: Path) -> Path | None:
    for pattern in ("diffusion_pytorch_model*.safetensors", "*.safetensors", "diffusion_pytorch_model*.bin"):
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    return None


def fit_problem(name: str, config: Any, unet_config: Any, vae_factor: int) -> str | None:
    """Why a ControlNet config cannot steer this UNet, or None."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    if get("cross_attention_dim") != unet_config.cross_attention_dim:
        return (f"ControlNet {name} was made for text width {get('cross_attention_dim')}, the model has "
                f"{unet_config.cross_attention_dim} (a ControlNet for another model family?)")
    if list(get("block_out_channels") or []) != list(unet_config.block_out_channels):
        return (f"ControlNet {name} has UNet widths {list(get('block_out_channels') or [])}, the model "
                f"{list(unet_config.block_out_channels)} (a ControlNet for another model?)")
    factor = 2 ** (len(get("conditioning_embedding_out_channels") or (16, 32, 96, 256)) - 1)
    if factor != vae_factor:
        return (f"ControlNet {name} shrinks control images {factor}x but this model's VAE works at {vae_factor}x; "
                f"use a ControlNet trained for this model")
    return None


def family_fit_problem(name: str, config: dict[str, Any], denoiser: Denoiser) -> str | None:
    """Why a ControlNet config (with its `_class_name`) cannot steer this model's denoiser, or None."""
    problem = class_problem(name, config.get("_class_name"), denoiser.family, denoiser.label)
    if problem:
        return problem
    if denoiser.is_transformer:
        return transformer_fit_problem(name, config, denoiser.config, denoiser.label)
    return fit_problem(name, config, denoiser.config, denoiser.vae_scale_factor)


def _check_fits(ref: ControlNetRef, config: dict[str, Any], denoiser: Denoiser) -> None:
    problem = family_fit_problem(ref.name, config, denoiser)
    if problem:
        raise InvalidRequest(problem)


def _may_fit(ref: ControlNetRef, denoiser: Denoiser) -> bool:
    """Whether a ControlNet could fit, judged from a folder's config.json; single files (UNet ControlNets) cannot
    tell cheaply."""
    if ref.kind != "diffusers":
        return not denoiser.is_transformer
    config = json.loads((Path(ref.location) / "config.json").read_text(encoding="utf-8"))
    return family_fit_problem(ref.name, config, denoiser) is None


# The UNet config entries a ControlNet shares with its base UNet (as ControlNetModel.from_unet copies them).
_SHARED_WITH_UNET = (
    "encoder_hid_dim", "encoder_hid_dim_type", "addition_embed_type", "addition_time_embed_dim",
    "transformer_layers_per_block", "flip_sin_to_cos", "freq_shift", "down_block_types", "only_cross_attention",
    "block_out_channels", "layers_per_block", "downsample_padding", "mid_block_scale_factor", "act_fn",
    "norm_num_groups", "norm_eps", "cross_attention_dim", "attention_head_dim", "num_attention_heads",
    "use_linear_projection", "class_embed_type", "num_class_embeds", "upcast_attention", "resnet_time_scale_shift",
    "projection_class_embeddings_input_dim", "mid_block_type",
)


def controlnet_config(unet_config: Any, state: dict[str, Any]) -> dict[str, Any]:
    """A ControlNetModel config for a single-file state dict: the base UNet's shape, with the input and
    control-image embedding channels read from the file."""
    from huabu.engine.control.convert import conditioning_channels_of

    conditioning_channels, embedding_channels = conditioning_channels_of(state)
    config: dict[str, Any] = {"_class_name": "ControlNetModel"}
    for key in _SHARED_WITH_UNET:
        if key in unet_config:
            value = unet_config[key]
            config[key] = list(value) if isinstance(value, tuple) else value
    conv_in = next((state[k] for k in ("conv_in.weight", "control_model.input_blocks.0.0.weight",
                                        "input_blocks.0.0.weight") if k in state), None)
    config["in_channels"] = int(conv_in.shape[1]) if conv_in is not None else 4
    config["conditioning_channels"] = conditioning_channels
    config["conditioning_embedding_out_channels"] = list(embedding_channels)
    return config


@dataclass
class ControlPlan(Extension):
    """A request's ControlNet units with their resolved, loaded ControlNets."""

    units: list[CheckedUnit]
    refs: list[ControlNetRef]
    nets: list[Any]
    annotators_dir: Path
    allow_unsafe_pickle: bool = False
    family: str = "sd"  # the model's (huabu.engine.denoisers.family_of): which ControlNet classes and pipelines
    maps: list[Image.Image] = field(default_factory=list)  # the control maps of the last `inputs` call

    @property
    def active(self) -> list[tuple[CheckedUnit, Any]]:
        """Units whose guidance window is not empty, with their nets. diffusers refuses start == end; such a unit
        never acts (it is still recorded in the infotext, as sd-webui-controlnet does)."""
        return [(checked, net) for checked, net in zip(self.units, self.nets)
                if checked.unit.guidance_start < checked.unit.guidance_end]

    def controlnet(self, cfg_scale: float) -> Any:
        """The acting units' nets in the family's multi-ControlNet container, UNet ones each wrapped for its control
        mode (transformer models take Balanced only: Denoiser.check_request)."""
        from huabu.core.control_units import BALANCED, CONTROL_FIRST
        from huabu.engine.control_modes import ModeControlNet

        if self.family not in ("sd", "sdxl"):
            return multi_controlnet(self.family, [net for _, net in self.active])
        guided = cfg_scale > 1.0  # diffusers runs classifier-free guidance only then
        nets = []
        for checked, net in self.active:
            control_mode = checked.unit.control_mode
            if control_mode == BALANCED:
                nets.append(net)
            else:
                nets.append(ModeControlNet(net, soft=True, prompt_half_only=guided and control_mode == CONTROL_FIRST))
        return multi_controlnet(self.family, nets)

    def pipeline(self, model: LoadedModel, mode: str, cfg_scale: float) -> Any:
        """The ControlNet variant of the mode's pipeline (SD, SDXL, SD3 or FLUX), sharing every component of the
        model; the plain mode pipeline when no unit acts."""
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image

        from huabu.engine.pipelines import mode_pipeline

        if not self.active:
            return mode_pipeline(model, mode)
        auto = {"txt2img": AutoPipelineForText2Image, "img2img": AutoPipelineForImage2Image,
                "inpaint": AutoPipelineForInpainting}[pipeline_mode(model, mode)]
        # dtype: from_pipe casts to float32 unless told otherwise, which would cast the shared modules in place.
        pipe = auto.from_pipe(model.pipeline, controlnet=self.controlnet(cfg_scale), dtype=model.pipeline.dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def inputs(self, pipe: Any, width: int, height: int) -> dict[str, Any]:
        """The pipeline arguments of the units: control maps of the output size and per-unit scales/windows."""
        active = [checked for checked, _ in self.active]
        self.maps = [self.control_map(checked, width, height, pipe.device) for checked in active]
        if not active:
            return {}
        accepted = inspect.signature(pipe.__call__).parameters
        key = "control_image" if "control_image" in accepted else "image"
        kwargs: dict[str, Any] = {
            key: self.maps,
            "controlnet_conditioning_scale": [float(c.unit.weight) for c in active],
            "control_guidance_start": [float(c.unit.guidance_start) for c in active],
            "control_guidance_end": [float(c.unit.guidance_end) for c in active],
        }
        if "height" in accepted:
            kwargs.update(height=height, width=width)
        if self.family == "flux":  # FLUX's multi-ControlNet zips the nets with their union modes: none here
            kwargs["control_mode"] = [None] * len(active)
        return kwargs

    def frame_inputs(self, pipe: Any, width: int, height: int, frames: int) -> dict[str, Any]:
        """The AnimateDiff ControlNet pipelines' arguments: each unit's control map given to every frame."""
        active = [checked for checked, _ in self.active]
        self.maps = [self.control_map(checked, width, height, pipe.device) for checked in active]
        return {"conditioning_frames": [[m] * frames for m in self.maps],
                "controlnet_conditioning_scale": [float(c.unit.weight) for c in active],
                "control_guidance_start": [float(c.unit.guidance_start) for c in active],
                "control_guidance_end": [float(c.unit.guidance_end) for c in active]}

    def control_map(self, checked: CheckedUnit, width: int, height: int, device: Any = "cpu") -> Image.Image:
        """The unit's preprocessed image, fitted to width x height by its resize mode."""
        from huabu.engine.control.resize import pixel_perfect_resolution, resize_control_map

        unit, name, image = checked.unit, checked.preprocessor, checked.image
        if name == GLYPH:
            from huabu.engine.control.glyph import glyph_map

            canvas_w, canvas_h = checked.canvas
            if (width, height) != checked.canvas and width * canvas_h == height * canvas_w:
                # another size of the same aspect (the hires fix's pass): drawn at that size, the strokes stay sharp
                scale = width / canvas_w
                words = [(text, tuple(round(v * scale) for v in box)) for text, box in checked.words]
                return glyph_map(words, width, height)
            drawn = glyph_map(checked.words, canvas_w, canvas_h)
            return resize_control_map(drawn, width, height, unit.resize_mode)
        if image.width < 1 or image.height < 1:
            raise BadImage(f"ControlNet unit {checked.index} image is empty ({image.width}x{image.height})")
        resolution = (pixel_perfect_resolution(image.size, width, height, unit.resize_mode)
                      if unit.pixel_perfect else unit.processor_res)
        detected = run_preprocessor(name, image, resolution, unit.threshold_a, unit.threshold_b, self.annotators_dir,
                                    self.allow_unsafe_pickle, device, f"ControlNet unit {checked.index}")
        return resize_control_map(detected, width, height, unit.resize_mode)

    def infotext_params(self) -> dict[str, str]:
        """`ControlNet i` fields, numbered over the enabled units as sd-webui-controlnet does."""
        from huabu.core.control_infotext import serialize_unit, thresholds_shown

        params = {}
        for number, (checked, ref) in enumerate(zip(self.units, self.refs)):
            unit = checked.unit
            threshold_a, threshold_b = thresholds_shown(checked.preprocessor, unit.threshold_a, unit.threshold_b)
            params[f"ControlNet {number}"] = serialize_unit({
                "module": unit.module, "model": ref.title, "weight": float(unit.weight),
                "resize_mode": unit.resize_mode, "processor_res": unit.processor_res, "threshold_a": threshold_a,
                "threshold_b": threshold_b, "guidance_start": float(unit.guidance_start),
                "guidance_end": float(unit.guidance_end), "pixel_perfect": unit.pixel_perfect,
                "control_mode": unit.control_mode})
        return params
