"""What kind of denoiser a pipeline has: a UNet (SD 1.x / 2.x / SDXL) or a transformer (DiT: SD3, FLUX, PixArt and
any diffusers pipeline with a `transformer` component).

The engine's one generation path asks this adapter instead of reaching for `pipeline.unet`: the default size and
size step, whether huabu's A1111 prompt encoder applies (UNet models) or the pipeline encodes its own prompts
(transformers, huabu.engine.prompts.plain), flow-matching schedulers, FLUX's packed latents, and which of huabu's
UNet-only features a request may not use on this model (one-line errors, checked before anything runs).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huabu.core.control_units import BALANCED
from huabu.core.errors import InvalidRequest
from huabu.core.samplers import is_flow_config
from huabu.engine.controlnet_families import TRANSFORMER_MODES, controls_family

# Transformer families whose diffusers pipelines load LoRAs (diffusers' SD3 and FLUX LoRA loaders).
LORA_FAMILIES = ("sd3", "flux")
FAMILY_NAMES = {"sd": "SD", "sdxl": "SDXL", "sd3": "SD3", "flux": "FLUX", "pixart": "PixArt", "dit": "DiT"}


def family_of(model_index: dict[str, Any]) -> str:
    """The model family a diffusers model_index.json describes: "sd", "sdxl", "sd3", "flux", "pixart", or "dit" for
    another pipeline with a `transformer` component."""
    name = str(model_index.get("_class_name", ""))
    if name.startswith("StableDiffusion3"):
        return "sd3"
    if name.startswith("Flux"):
        return "flux"
    if name.startswith("PixArt"):
        return "pixart"
    if _present(model_index.get("transformer")):
        return "dit"
    return "sdxl" if "XL" in name or _present(model_index.get("text_encoder_2")) else "sd"


def folder_family(folder: Path) -> str:
    """family_of a diffusers folder's model_index.json ("sd" when it cannot be read)."""
    try:
        return family_of(json.loads((folder / "model_index.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return "sd"


def denoiser_folder(folder: Path) -> str:
    """The subfolder holding a diffusers folder's denoiser weights: "transformer" for DiT models, else "unet"."""
    return "unet" if folder_family(folder) in ("sd", "sdxl") else "transformer"


def _present(spec: Any) -> bool:
    return isinstance(spec, list) and len(spec) == 2 and spec[0] is not None


def call_parameters(pipe: Any) -> frozenset[str]:
    """The keyword arguments a pipeline's __call__ takes."""
    return frozenset(inspect.signature(type(pipe).__call__).parameters)


@dataclass(frozen=True)
class Denoiser:
    """The denoiser of one loaded pipeline and what follows from it."""

    family: str
    module: Any  # pipeline.unet or pipeline.transformer
    vae_scale_factor: int
    default_sample_size: int | None  # the pipeline's own, for transformers without a sample_size (FLUX)
    flow: bool  # a flow-matching scheduler (SD3, FLUX): huabu.core.samplers' flow table applies

    @classmethod
    def of(cls, pipeline: Any, scheduler_config: Any = None) -> Denoiser:
        """The denoiser of `pipeline`; `scheduler_config` is the model's own (the pipeline's current scheduler may
        be a sampler's)."""
        unet = getattr(pipeline, "unet", None)
        module = unet if unet is not None else getattr(pipeline, "transformer", None)
        if module is None:
            raise InvalidRequest(f"{type(pipeline).__name__} has neither a UNet nor a transformer; huabu cannot "
                                 f"generate images with it")
        family = family_of({"_class_name": type(pipeline).__name__,
                            "transformer": ["diffusers", "x"] if unet is None else None,
                            "text_encoder_2": ["transformers", "x"] if getattr(pipeline, "text_encoder_2", None)
                            is not None else None})
        return cls(family, module, int(pipeline.vae_scale_factor), getattr(pipeline, "default_sample_size", None),
                   is_flow_config(scheduler_config if scheduler_config is not None else pipeline.scheduler.config))

    @property
    def is_transformer(self) -> bool:
        return self.family not in ("sd", "sdxl")

    @property
    def label(self) -> str:
        return FAMILY_NAMES[self.family]

    @property
    def packed(self) -> bool:
        """FLUX packs 2x2 latent patches into tokens: its pipelines return latents as [batch, tokens, channels]."""
        return self.family == "flux"

    @property
    def config(self) -> Any:
        return self.module.config

    @property
    def dtype(self) -> Any:
        return self.module.dtype

    @property
    def is_inpaint(self) -> bool:
        """A 9-channel UNet (latents + mask + masked image), as in SD inpainting checkpoints."""
        return not self.is_transformer and int(self.config.in_channels) == 9

    @property
    def default_size(self) -> int:
        """The training size in pixels: the denoiser's sample size (the pipeline's own for FLUX) times the VAE
        factor."""
        sample = getattr(self.config, "sample_size", None) or self.default_sample_size or 64
        sample = sample[0] if isinstance(sample, (list, tuple)) else sample
        return int(sample) * self.vae_scale_factor

    @property
    def size_multiple(self) -> int:
        """What width and height must be multiples of: the VAE factor times the transformer's patch size (FLUX's
        2x2 packing), so every latent patch is whole."""
        patch = 2 if self.packed else int(getattr(self.config, "patch_size", None) or 1)
        return self.vae_scale_factor * (patch if self.is_transformer else 1)

    def check_request(self, request: Any, *, control: bool, loras: bool, sampler_class: str) -> None:
        """Refuse, with one line, what huabu does only for UNet models; nothing to check for UNets."""
        if not self.is_transformer:
            return
        what = f"this is a {self.label} (transformer) model"
        modes = [unit.control_mode for unit in getattr(request, "controlnets", []) if unit.enabled]
        unsupported = [
            (control and not controls_family(self.family),
             "ControlNet units steer SD, SDXL, SD3 and FLUX models only (diffusers has no ControlNet for others)"),
            (control and getattr(request, "mode", "txt2img") not in TRANSFORMER_MODES.get(self.family, ()),
             f"ControlNet on {self.label} models runs {' / '.join(TRANSFORMER_MODES.get(self.family, ()))} only "
             f"(diffusers' {self.label} ControlNet pipelines)"),
            (control and any(mode != BALANCED for mode in modes),
             "control modes other than Balanced run on UNet ControlNets only"),
            (loras and self.family not in LORA_FAMILIES, "LoRAs load into SD, SDXL, SD3 and FLUX models only"),
            (bool(getattr(request, "ip_adapters", None)), "IP-Adapter image prompts need a UNet model so far"),
            (getattr(request, "enable_hr", False), "the hires fix runs on UNet models only so far"),
            (getattr(request, "subseed_strength", 0) > 0 or getattr(request, "seed_resize", None) is not None,
             "variation seeds and seed resize run on UNet models only so far"),
            (getattr(request, "inpainting_fill", 1) in (2, 3),
             "masked content 'latent noise' / 'latent nothing' runs on UNet models only so far"),
        ]
        for refused, why in unsupported:
            if refused:
                raise InvalidRequest(f"{why}; {what}")
        if self.flow and getattr(request, "mode", "txt2img") != "txt2img" and not sampler_class.startswith("FlowMatch"):
            raise InvalidRequest(f"sampler {request.sampler!r} runs txt2img only on flow-matching models "
                                 f"({self.label}); img2img and inpaint need 'Euler' or 'Euler a'")

    def call_options(self, pipe: Any) -> dict[str, Any]:
        """Pipeline arguments this family needs on every call: PixArt's aspect-ratio binning off (the size asked
        for is the size made, and latents come back at that size)."""
        return {"use_resolution_binning": False} if "use_resolution_binning" in call_parameters(pipe) else {}

    def start_latents(self, pipe: Any, call: dict[str, Any]) -> dict[str, Any]:
        """FLUX's start noise for a txt2img ControlNet call, drawn as the pipeline would draw it (from each image's
        generator, then packed). FLUX's ControlNet pipelines VAE-sample the control image from those generators
        before drawing the noise, so without this a unit at weight 0 gave another picture than no unit. Empty for
        other calls."""
        if not self.packed or "control_image" not in call or "latents" in call or "image" in call:
            return {}
        generators = call["generator"]
        latents, _ = pipe.prepare_latents(len(generators), self.config.in_channels // 4, call["height"],
                                          call["width"], self.dtype, pipe.device, generators)
        return {"latents": latents}

    def spatial_latents(self, latents: Any, width: int, height: int) -> Any:
        """Latents as [batch, channels, h, w] for the VAE: FLUX's packed tokens unpacked (as FluxPipeline does
        before decoding), others as they are."""
        if not self.packed or latents.dim() == 4:
            return latents
        batch, _, channels = latents.shape
        h, w = 2 * (height // (self.vae_scale_factor * 2)), 2 * (width // (self.vae_scale_factor * 2))
        latents = latents.view(batch, h // 2, w // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return latents.reshape(batch, channels // 4, h, w)


def step_callback_kwargs(pipe: Any, callback: Any, tensor_inputs: list[str]) -> dict[str, Any]:
    """The pipeline arguments that run `callback` (a diffusers callback_on_step_end) after each step. Pipelines
    older than callback_on_step_end (PixArt) get it through their `callback(step, timestep, latents)`: progress is
    reported, but the latents cannot be changed and an interrupt waits for the end of the call."""
    params = call_parameters(pipe)
    if "callback_on_step_end" in params:
        # diffusers documents `_callback_tensor_inputs` as what a pipeline's callback may read and replace; a name
        # the pipeline lacks (SD3 img2img's pooled embeddings) is left out, and the callback does without it
        allowed = getattr(pipe, "_callback_tensor_inputs", None)
        names = [name for name in tensor_inputs if allowed is None or name in allowed]
        return {"callback_on_step_end": callback, "callback_on_step_end_tensor_inputs": names}
    if "callback" not in params:
        return {}
    view = _StepView(pipe)

    def legacy(step: int, timestep: Any, latents: Any) -> None:
        view.num_timesteps = len(pipe.scheduler.timesteps)
        callback(view, step, timestep, {"latents": latents})

    return {"callback": legacy, "callback_steps": 1}


class _StepView:
    """What a step callback reads of a pipeline without callback_on_step_end: its attributes plus num_timesteps."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.num_timesteps = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)
