"""IP-Adapter image prompts at inference, over diffusers' own IP-Adapter support: the weights go in through
`pipe.load_ip_adapter` (as a state dict), each adapter's weight through `set_ip_adapter_scale`, and the reference
images are encoded once per run (`prepare_ip_adapter_image_embeds`) into `ip_adapter_image_embeds`, which every
pipeline call of the run takes: each batch, the hires fix's second pass, the ControlNet pipelines.

Files live in `Settings.ip_adapter_dir` (~/.huabu/ip-adapter):

- weights: `.safetensors` files holding `image_proj.*` and `ip_adapter.*` keys (the original layout, which
  h94/IP-Adapter and sd-webui-controlnet ship), anywhere in the folder. They are read as safetensors only, judged by
  the bytes (huabu.engine.checkpoints): a pickle file is refused whatever its name.
- a LoRA trained with the adapter, as IP-Adapter FaceID ships one: `<weights stem>_lora.safetensors` beside the
  weights file (FaceID's own naming). It joins the run's LoRAs whenever its adapter is used, at the largest weight
  of the units using it, so a weight-0 unit is the base model exactly. Such files are not listed as adapters.
- the image encoder: a transformers CLIPVisionModelWithProjection folder named `image_encoder/` (config.json and
  model.safetensors), the nearest one from the weights file's folder up to the IP-Adapter folder. That reads
  diffusers' `load_ip_adapter` layout (`models/image_encoder/` beside `models/ip-adapter_sd15.safetensors`) and a
  flat folder of weights files sharing one `image_encoder/` alike.

A model folder may bring its own: `<folder>-ip-adapter/` beside it (weights and `image_encoder/`); a unit without
a model takes it first, as ControlNet units take a model's own ControlNets. Each unit is one adapter (the same
weights may serve several images, each with its own weight). The adapters join the model's shared UNet for one run
only: afterwards the UNet gets its own attention processors back.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from huabu.core.errors import InvalidRequest, ModelNotFound, UnsafeCheckpoint, first_line
from huabu.core.ip_adapters import serialize_ip_adapter_unit
from huabu.core.requests import IPAdapterSpec, LoraSpec
from huabu.core.settings import Settings
from huabu.engine import checkpoints
from huabu.engine.controlnets import legacy_hash, unit_image
from huabu.engine.extensions import Extension
from huabu.engine.models import LoadedModel, looks_like_path

IMAGE_ENCODER = "image_encoder"
OWN_FOLDER_SUFFIX = "-ip-adapter"  # a model folder's own IP-Adapter: `<folder>-ip-adapter/` beside it
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")  # listed so that a pickle one is refused by name
LORA_SUFFIX = "_lora"  # an adapter's own LoRA: ip-adapter-faceid_sd15_lora.safetensors beside ip-adapter-faceid_sd15
_A1111_TITLE = re.compile(r"^(.*?)\s*\[([0-9a-fA-F]{8,64})\]$")
_PARTS = ("image_proj", "ip_adapter")


@dataclass(frozen=True)
class IPAdapterRef:
    """An IP-Adapter weights file and the image encoder folder that goes with it (None: none found)."""

    name: str
    path: Path
    encoder: Path | None
    short_hash: str
    lora: Path | None = None  # the LoRA trained with it (`<stem>_lora.safetensors` beside it)

    @property
    def title(self) -> str:
        """"ip-adapter_sd15 [hash]", as sd-webui-controlnet titles its models."""
        return f"{self.name} [{self.short_hash}]"


@dataclass
class CheckedIPAdapter:
    """A request's image prompt with its reference image read (the img2img/inpaint input when it has none)."""

    index: int
    spec: IPAdapterSpec
    image: Image.Image


def check_ip_adapters(specs: list[IPAdapterSpec], init_image: Image.Image | None = None) -> list[CheckedIPAdapter]:
    """The image prompts with their images read: one-line errors naming a missing or unreadable file. Called before
    the model loads, so bad input fails fast."""
    checked = []
    for index, spec in enumerate(specs):
        if spec.image:
            image = unit_image(spec.image, f"IP-Adapter {index} image")
        elif init_image is not None:
            image = init_image
        else:
            raise InvalidRequest(f"IP-Adapter {index} has no image: give it one (--ip-adapter IMAGE)")
        checked.append(CheckedIPAdapter(index, spec, image))
    return checked


class IPAdapterManager:
    """Finds IP-Adapters in `settings.ip_adapter_dir` and keeps the last few weights and image encoders read."""

    def __init__(self, settings: Settings, max_loaded: int = 2) -> None:
        self.settings = settings
        self.max_loaded = max_loaded
        self._states: OrderedDict[tuple, dict] = OrderedDict()
        self._encoders: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def root(self) -> Path:
        return self.settings.ip_adapter_dir

    def list_ip_adapters(self) -> list[IPAdapterRef]:
        """Every weights file in the IP-Adapter folder (image encoder folders aside)."""
        if not self.root.is_dir():
            return []
        return [self.ref_for(path) for path in sorted(self.root.rglob("*")) if is_weights_file(path)
                and IMAGE_ENCODER not in path.relative_to(self.root).parts]

    def own_ip_adapters(self, model_path: Path | None) -> list[IPAdapterRef]:
        """The IP-Adapters shipped with a model folder: the weights files of `<folder>-ip-adapter/` beside it."""
        if model_path is None or not model_path.is_dir():
            return []
        own = model_path.parent / f"{model_path.name}{OWN_FOLDER_SUFFIX}"
        return [self.ref_for(path) for path in sorted(own.glob("*")) if is_weights_file(path)] if own.is_dir() else []

    def resolve(self, spec: str, model_path: Path | None = None) -> IPAdapterRef:
        """The IP-Adapter a unit's `model` names: a path, a name in the folder or among the model's own (file name
        with or without its suffix, or its path in the folder; "name [hash]" too), or empty: the model's own one,
        else the folder's only one; `model_path` is the model's folder."""
        spec = (spec or "").strip()
        if spec and looks_like_path(spec) and Path(spec).expanduser().is_file():
            return self.ref_for(Path(spec).expanduser())
        own = self.own_ip_adapters(model_path)
        available = self.list_ip_adapters()
        if not spec:
            if len(own) == 1:
                return own[0]
            if len(available) == 1:
                return available[0]
            if not available:
                raise ModelNotFound(f"no IP-Adapter in {self.root}: put ip-adapter_sd15.safetensors and its "
                                    f"image_encoder/ folder there (see the README)")
            raise InvalidRequest(f"several IP-Adapters in {self.root} ({', '.join(r.name for r in available)}); "
                                 f"name one (model / --ip-adapter-model)")
        title = _A1111_TITLE.match(spec)
        wanted, short = (title.group(1).lower(), title.group(2).lower()) if title else (spec.lower(), None)
        available += own
        for ref in available:
            relative = ref.path.relative_to(self.root) if ref.path.is_relative_to(self.root) else Path(ref.path.name)
            if wanted in {ref.path.name.lower(), ref.name.lower(), str(relative).lower(),
                          str(relative.with_suffix("")).lower()}:
                return ref
        for ref in available if short else []:
            if ref.short_hash.startswith(short[:8]):
                return ref
        if looks_like_path(spec):
            raise ModelNotFound(f"IP-Adapter {spec!r} not found: no such file, and not a name in {self.root}")
        raise ModelNotFound(f"IP-Adapter {spec!r} not found in {self.root}"
                            + (f" (it holds: {', '.join(r.name for r in available)})" if available else ""))

    def ref_for(self, path: Path) -> IPAdapterRef:
        lora = path.with_name(f"{path.stem}{LORA_SUFFIX}.safetensors")
        return IPAdapterRef(path.stem, path, self.encoder_for(path), legacy_hash(path),
                            lora if lora.is_file() else None)

    def encoder_for(self, path: Path) -> Path | None:
        """The nearest `image_encoder/` folder from the weights file's folder up to the IP-Adapter folder (the
        IP-Adapter folder's own for a file elsewhere)."""
        root = self.root.resolve()
        folder = path.resolve().parent
        while True:
            if (folder / IMAGE_ENCODER).is_dir():
                return folder / IMAGE_ENCODER
            if folder == root or root not in folder.parents:
                break
            folder = folder.parent
        return root / IMAGE_ENCODER if (root / IMAGE_ENCODER).is_dir() else None

    # --- loading -----------------------------------------------------------------------------------------------

    def plan(self, checked: list[CheckedIPAdapter], model: LoadedModel, first_number: int = 0) -> IPAdapterPlan:
        """Resolve and read each image prompt's IP-Adapter and their one image encoder for `model`;
        `first_number` numbers their infotext fields after the request's ControlNet units."""
        refs = [self.resolve(c.spec.model, model.ref.path) for c in checked]
        states = [self.state(ref, model) for ref in refs]
        encoders = {ref.encoder for ref in refs}
        if None in encoders:
            missing = next(ref for ref in refs if ref.encoder is None)
            raise ModelNotFound(f"no image encoder for IP-Adapter {missing.path.name}: put the CLIP vision model "
                                f"folder (config.json, model.safetensors) at {self.root / IMAGE_ENCODER}")
        if len(encoders) > 1:
            raise InvalidRequest(f"the IP-Adapters of one request must share one image encoder; these use "
                                 f"{', '.join(sorted(str(e) for e in encoders))}")
        return IPAdapterPlan(checked, refs, states, self.encoder(encoders.pop(), model), first_number)

    def state(self, ref: IPAdapterRef, model: LoadedModel) -> dict[str, dict[str, Any]]:
        """{"image_proj": ..., "ip_adapter": ...}, as diffusers' load_ip_adapter takes it, checked to fit `model`."""
        stat = ref.path.stat()
        key = (str(ref.path.resolve()), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            state = self._states.get(key)
            if state is None:
                state = read_ip_adapter(ref.path)
                while len(self._states) >= self.max_loaded:
                    self._states.popitem(last=False)
                self._states[key] = state
            self._states.move_to_end(key)
        problem = fit_problem(ref.path.name, state, model.pipeline.unet.config.cross_attention_dim)
        if problem:
            raise InvalidRequest(problem)
        return state

    def encoder(self, folder: Path, model: LoadedModel) -> Any:
        """The CLIPVisionModelWithProjection in `folder` on the model's device and dtype (safetensors only)."""
        pipe = model.pipeline
        key = (str(folder.resolve()), str(pipe.device), str(pipe.dtype))
        with self._lock:
            encoder = self._encoders.get(key)
            if encoder is None:
                encoder = load_image_encoder(folder, pipe.dtype).to(pipe.device).eval()
                while len(self._encoders) >= self.max_loaded:
                    self._encoders.popitem(last=False)
                self._encoders[key] = encoder
            self._encoders.move_to_end(key)
        return encoder


def is_weights_file(path: Path) -> bool:
    """Whether `path` may be an IP-Adapter's weights: a file of a weights suffix that is not an adapter's LoRA."""
    return (path.is_file() and path.suffix.lower() in WEIGHT_SUFFIXES
            and not (path.stem.endswith(LORA_SUFFIX) and path.suffix.lower() == ".safetensors"))


def read_ip_adapter(path: Path) -> dict[str, dict[str, Any]]:
    """An IP-Adapter file's tensors split by part; safetensors only, judged by the bytes."""
    fmt = checkpoints.sniff_format(path)
    if fmt != checkpoints.SAFETENSORS:
        what = ("a pickle file, which can run code when loaded" if fmt == checkpoints.PICKLE
                else "not a safetensors file")
        raise UnsafeCheckpoint(f"IP-Adapter {path.name} is {what}; huabu reads IP-Adapter weights as .safetensors "
                               f"only (get ip-adapter_sd15.safetensors, not the .bin)")
    state: dict[str, dict[str, Any]] = {part: {} for part in _PARTS}
    for key, tensor in checkpoints.load_state_dict(path).items():
        part, _, rest = key.partition(".")
        if part in state:
            state[part][rest] = tensor
    if not all(state.values()):
        raise ModelNotFound(f"{path.name} is not an IP-Adapter (it lacks image_proj.* or ip_adapter.* weights)")
    return state


def fit_problem(name: str, state: dict[str, dict[str, Any]], cross_attention_dim: int) -> str | None:
    """Why an IP-Adapter cannot join a UNet of this text width, or None."""
    widths = {tensor.shape[1] for key, tensor in state["ip_adapter"].items() if key.endswith("to_k_ip.weight")}
    if widths != {cross_attention_dim}:
        return (f"IP-Adapter {name} was made for text width {', '.join(map(str, sorted(widths)))}, the model has "
                f"{cross_attention_dim} (an IP-Adapter for another model family? sd15 and sdxl differ)")
    return None


def load_image_encoder(folder: Path, dtype: Any) -> Any:
    from transformers import CLIPVisionModelWithProjection

    if not (folder / "model.safetensors").is_file():
        raise UnsafeCheckpoint(f"image encoder {folder} holds no model.safetensors (huabu reads it as safetensors "
                               f"only)")
    checkpoints.check_safetensors(folder / "model.safetensors", f"image encoder {folder}/model.safetensors")
    try:  # in the pipeline's dtype whatever the file's: a Plus Resampler takes the hidden states uncast
        return CLIPVisionModelWithProjection.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                                             dtype=dtype)
    except (OSError, ValueError) as err:
        raise ModelNotFound(f"cannot load the image encoder {folder}: {first_line(err)}") from None


class IPAdapterPlan(Extension):
    """A request's image prompts with their weights read: attached to a pipeline for one run (`attached`), their
    `ControlNet N` infotext fields numbered after the ControlNet units'."""

    def __init__(self, units: list[CheckedIPAdapter], refs: list[IPAdapterRef], states: list[dict],
                 encoder: Any, first_number: int = 0) -> None:
        self.units, self.refs, self.states, self.encoder = units, refs, states, encoder
        self.first_number = first_number

    @contextmanager
    def attached(self, pipe: Any, cfg_scale: float, batch_size: int) -> Iterator[dict[str, Any]]:
        """The adapters on `pipe`'s UNet (shared with the model's other pipelines) for the `with` block, which gets
        the pipeline arguments: the images' embeddings, repeated for `batch_size` prompts. Afterwards the UNet's
        own attention processors and the pipeline's image encoder and feature extractor are back."""
        import torch

        unet = pipe.unet
        processors = dict(unet.attn_processors)
        before = {name: getattr(pipe, name, None) for name in ("image_encoder", "feature_extractor")}
        pipe.register_modules(image_encoder=self.encoder)
        try:
            count = len(self.states)
            try:
                pipe.load_ip_adapter(list(self.states), subfolder=[""] * count, weight_name=[""] * count)
            except (KeyError, RuntimeError, ValueError) as err:
                names = ", ".join(ref.path.name for ref in self.refs)
                raise InvalidRequest(f"IP-Adapter {names} does not fit this model's UNet ({first_line(err)})") from None
            pipe.set_ip_adapter_scale([float(unit.spec.weight) for unit in self.units])
            guided = cfg_scale > 1.0 and unet.config.time_cond_proj_dim is None  # as diffusers decides
            with torch.no_grad():
                embeds = pipe.prepare_ip_adapter_image_embeds([unit.image for unit in self.units], None, pipe.device,
                                                              batch_size, guided)
            yield {"ip_adapter_image_embeds": embeds}
        finally:
            if getattr(unet, "encoder_hid_proj", None) is not None:
                pipe.unload_ip_adapter()
            unet.set_attn_processor(processors)
            pipe.register_modules(**before)

    def lora_specs(self) -> list[LoraSpec]:
        """The LoRAs the adapters were trained with, each at the largest weight of the units using it."""
        weights: dict[Path, float] = {}
        for unit, ref in zip(self.units, self.refs):
            if ref.lora is not None:
                weights[ref.lora] = max(weights.get(ref.lora, 0.0), float(unit.spec.weight))
        return [LoraSpec(name=str(path), weight=weight) for path, weight in weights.items()]

    def infotext_params(self) -> dict[str, str]:
        return {f"ControlNet {self.first_number + number}":
                serialize_ip_adapter_unit(unit.spec.module, ref.title, unit.spec.weight)
                for number, (unit, ref) in enumerate(zip(self.units, self.refs))}
