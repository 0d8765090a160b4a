"""The one generation path: a GenerateRequest in, images with their A1111 infotexts out.

CLI, web UI and HTTP API all call `Engine.generate`; none of them re-implements any of it. Per request: validate
inputs, apply styles, take LoRA tags out of the prompt, encode the prompt schedule, then run the diffusers pipeline
of the requested mode once per `n_iter` with one CPU generator per image (image i uses seed + i, as in A1111).
"""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PIL import Image

import huabu
from huabu.core import samplers
from huabu.engine.samplers import build_scheduler
from huabu.engine.controlnets import ControlNetManager, check_units
from huabu.engine.images import load_image, load_mask
from huabu.engine.loras import (ResolvedLora, apply_loras, lora_hashes_text, prompt_with_loras,
                                resolve_loras)
from huabu.engine.models import LoadedModel, ModelManager
from huabu.engine.pipelines import decode_latents, mode_pipeline, pipeline_mode
from huabu.core.errors import InvalidRequest
from huabu.engine.prompts.syntax import extract_loras
from huabu.core.requests import MAX_SEED, GenerateRequest, VideoRequest
from huabu.core.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """One sampling step done: `step` of `steps` in pipeline call `iteration` (0-based) of `n_iter`, which makes
    images `first_image` .. `first_image + batch_size - 1` of `total_images`."""

    iteration: int
    n_iter: int
    step: int
    steps: int
    first_image: int
    batch_size: int
    total_images: int
    latents: Any = field(default=None, repr=False, compare=False)  # this step's latents, for live previews


@dataclass
class GenerationResult:
    images: list[Image.Image]
    seeds: list[int]
    infotexts: list[str]
    request_used: GenerateRequest  # seed, size, sampler and schedule as actually used
    model: dict[str, Any]  # LoadedModel.info()
    paths: list[Path] = field(default_factory=list)  # saved files (save=True)
    gallery_ids: list[int] = field(default_factory=list)
    interrupted: bool = False


def format_number(value: float) -> str:
    """Numbers in infotexts as A1111 shows them: 7 rather than 7.0."""
    return str(int(value)) if float(value).is_integer() else str(value)


class Engine:
    """Runs GenerateRequests on models from a ModelManager. One generation at a time (a lock guards the models)."""

    def __init__(self, settings: Settings, models: ModelManager | None = None, gallery=None) -> None:
        self.settings = settings
        self.models = models or ModelManager(settings)
        self._gallery = gallery
        self._book = None
        self._lock = threading.Lock()
        self.controlnets = ControlNetManager(settings)

    @property
    def gallery(self):
        if self._gallery is None:
            from huabu.core.gallery import Gallery

            self._gallery = Gallery(self.settings.gallery_db)
        return self._gallery

    def generate(self, request: GenerateRequest, progress: Callable[[Progress], None] | None = None,
                 interrupt: Callable[[], bool] | None = None, save: bool = False,
                 outdir: str | Path | None = None) -> GenerationResult:
        """Generate `request.batch_size * request.n_iter` images.

        `progress` is called after every sampling step; when `interrupt()` turns true the current pipeline call stops
        (diffusers' `_interrupt` flag), its partly denoised images are returned and no further iterations run.
        `save=True` writes PNGs with the `parameters` chunk into `outdir` (default: settings.outputs_dir) and indexes
        them in the gallery.
        """
        with self._lock:
            return self._generate(request, progress, interrupt, save, outdir)

    def generate_video(self, request, progress: Callable[[Progress], None] | None = None,
                       interrupt: Callable[[], bool] | None = None, save: bool = False,
                       output: str | Path | None = None):
        """Generate one video for a VideoRequest (huabu.engine.video): the same models, prompt syntax, samplers,
        LoRAs, progress and interrupt as `generate`. `save=True` writes it to `output` (a .mp4/.webm/.gif path, or a
        folder; default: settings.outputs_dir) with its parameters and indexes it in the gallery as kind "video"."""
        from huabu.engine.video import generate_video

        with self._lock:
            return generate_video(self, request, progress, interrupt, save, output)

    # --- steps of a generation --------------------------------------------------------------------------------

    def _generate(self, request, progress, interrupt, save, outdir) -> GenerationResult:
        sampler, schedule = samplers.parse_sampler(request.sampler, request.schedule_type)
        schedule = samplers.resolved_schedule(sampler, schedule)
        init_image = load_image(request.init_image) if request.init_image else None
        mask = load_mask(request.mask) if request.mask else None
        control_units = check_units(request.controlnets, init_image)
        if mask is not None and mask.size != init_image.size:
            raise InvalidRequest(f"the mask is {mask.width}x{mask.height} but the image is "
                                 f"{init_image.width}x{init_image.height}; they must be the same size")
        prompt, negative, text, loras = self._prompts(request)

        model = self.models.load(request.model, request.checkpoint_config)
        width, height = _output_size(request, model, init_image)
        if init_image is not None:  # "just resize", as A1111's default resize mode
            init_image = init_image.resize((width, height), Image.LANCZOS)
            mask = mask.resize((width, height), Image.LANCZOS) if mask is not None else None
        base_seed = request.seed if request.seed != -1 else secrets.randbelow(MAX_SEED)
        used = request.model_copy(update={"seed": base_seed, "width": width, "height": height,
                                          "sampler": sampler.name, "schedule_type": schedule.label})
        control = self.controlnets.plan(control_units, model) if control_units else None
        pipe = control.pipeline(model, request.mode, used.cfg_scale) if control else mode_pipeline(model, request.mode)
        apply_loras(pipe, loras, model.lora_targets)

        scheduler = build_scheduler(sampler.name, schedule.label, model.scheduler_config)
        conditioning = self._conditioning(model, used, text, negative, request.steps * scheduler.order)
        inputs = _mode_inputs(model, used, init_image, mask)
        if control:
            inputs.update(control.inputs(pipe, width, height))
        extra_params = control.infotext_params() if control else {}
        total = used.batch_size * used.n_iter
        result = GenerationResult([], [], [], used, model.info())
        for iteration in range(used.n_iter):
            # Past MAX_SEED the numbering wraps to 0, so every recorded seed is one a request can ask for again.
            seeds = [(base_seed + iteration * used.batch_size + i) % (MAX_SEED + 1) for i in range(used.batch_size)]
            if sampler.scheduler == "DPMSolverSDEScheduler":  # Brownian noise seeded per image, see samplers
                scheduler = build_scheduler(sampler.name, schedule.label, model.scheduler_config, seeds)
            pipe.scheduler = scheduler
            callback = _step_callback(conditioning, progress, interrupt, iteration, used, total)
            images = self._run(model, pipe, used, conditioning, inputs, seeds, callback)
            if used.mode == "inpaint":
                images = _overlay(pipe, images, init_image, mask, used.mask_blur)
            for seed, image in zip(seeds, images):
                params = _infotext_params(used, model, seed, loras, extra_params)
                infotext = _infotext(prompt, negative, params)
                result.images.append(image)
                result.seeds.append(seed)
                result.infotexts.append(infotext)
                if save:
                    self._save(image, seed, infotext, prompt, negative, params, used.mode, outdir, result)
            if getattr(pipe, "interrupt", False):
                result.interrupted = True
                break
        return result

    def _prompts(self, request: GenerateRequest | VideoRequest) -> tuple[str, str, str, list[ResolvedLora]]:
        """What a request's prompts become: the styled prompt naming every LoRA used as its tag (the infotext's
        prompt line), the negative prompt, the prompt text without those tags (what is encoded) and the LoRAs."""
        prompt, negative = self._styled(request)
        prompt, untaggable = prompt_with_loras(prompt, request.loras)
        text, tag_loras = extract_loras(prompt)
        loras = resolve_loras([*untaggable, *tag_loras], self.settings.loras_dir, self.models.hashes,
                              self.settings.allow_unsafe_pickle)
        return prompt, negative, text, loras

    def _styled(self, request: GenerateRequest) -> tuple[str, str]:
        if not request.styles:
            return request.prompt, request.negative_prompt
        from huabu.engine.prompts.book import apply_styles, load_book

        if self._book is None:
            self._book = load_book()
        return apply_styles(request.prompt, request.negative_prompt, request.styles, self._book)

    def _conditioning(self, model: LoadedModel, request: GenerateRequest, text: str, negative: str, steps: int):
        from huabu.engine.prompts.encode import PromptEncoder, ScheduledConditioning

        encoder = model.encoders.get(request.clip_skip)
        if encoder is None:
            pipe = model.pipeline
            pairs = [(pipe.tokenizer, pipe.text_encoder)]
            if getattr(pipe, "text_encoder_2", None) is not None:
                pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
            encoder = PromptEncoder([t for t, _ in pairs], [e for _, e in pairs], clip_skip=request.clip_skip)
            model.encoders[request.clip_skip] = encoder
        return ScheduledConditioning.build(encoder, text, negative, steps, request.batch_size)

    def _run(self, model: LoadedModel, pipe, request: GenerateRequest, conditioning, inputs: dict, seeds: list[int],
             callback) -> list:
        import torch

        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        call = dict(num_inference_steps=request.steps, guidance_scale=request.cfg_scale, generator=generators,
                    num_images_per_prompt=1, output_type="latent", **conditioning.initial_kwargs(), **inputs)
        if callback is not None:
            call["callback_on_step_end"] = callback
            call["callback_on_step_end_tensor_inputs"] = ["latents", *conditioning.callback_tensor_inputs]
        latents = pipe(**call).images
        images, model.vae_needs_fp32 = decode_latents(pipe, latents, model.vae_needs_fp32)
        return images

    def _save(self, image, seed, infotext, prompt, negative, params, kind, outdir, result) -> None:
        from huabu.core.pnginfo import next_output_path, save_png_atomic

        folder = Path(outdir) if outdir is not None else self.settings.outputs_dir
        reserved = next_output_path(folder, seed)
        try:
            path = save_png_atomic(image, reserved, infotext)
        except BaseException:
            reserved.unlink(missing_ok=True)  # the empty placeholder next_output_path created
            raise
        result.paths.append(path)
        result.gallery_ids.append(self.gallery.add(path, kind, prompt, negative, params))


def _output_size(request: GenerateRequest, model: LoadedModel, init_image: Image.Image | None) -> tuple[int, int]:
    """Width and height: as requested, else the input image's (rounded down to the VAE factor), else the model's
    default; each must be a multiple of the VAE factor (one latent pixel per factor x factor image pixels)."""
    factor = model.vae_scale_factor
    if init_image is not None:
        default_w = max(factor, init_image.width // factor * factor)
        default_h = max(factor, init_image.height // factor * factor)
    else:
        default_w = default_h = model.default_size
    width, height = request.width or default_w, request.height or default_h
    for label, value in (("width", width), ("height", height)):
        if value % factor:
            lower, upper = value // factor * factor, (value // factor + 1) * factor
            raise InvalidRequest(f"{label} {value} is not a multiple of {factor} (this model's VAE factor); "
                                 f"use {lower or upper} or {upper}")
    return width, height


def _mode_inputs(model: LoadedModel, request: GenerateRequest, init_image, mask) -> dict[str, Any]:
    """Pipeline arguments of the mode. A 9-channel inpainting UNet runs every mode in the inpaint pipeline: txt2img
    as a fully masked grey image at strength 1, img2img as a fully masked input (A1111 does the same)."""
    size = (request.width, request.height)
    batch = request.batch_size
    inputs: dict[str, Any] = {"height": request.height, "width": request.width}
    if pipeline_mode(model, request.mode) == "txt2img":
        return inputs
    full_mask = Image.new("L", size, 255)
    if request.mode == "txt2img":  # 9-channel UNet
        image, mask, strength = Image.new("RGB", size, (127, 127, 127)), full_mask, 1.0
    else:  # init_image and mask already have the output size
        image, strength = init_image, request.denoising_strength
        mask = mask if mask is not None else full_mask
    if pipeline_mode(model, request.mode) == "img2img":
        return {"image": [image] * batch, "strength": strength}  # img2img takes its size from the image
    inputs.update(image=[image] * batch, mask_image=[mask] * batch, strength=strength)
    return inputs


def _overlay(pipe, images: list, init_image: Image.Image, mask: Image.Image, blur: int) -> list:
    """Paste the original back outside the (blurred) mask, as A1111 does after inpainting: the VAE round trip
    never returns exactly the pixels it was given."""
    soft = pipe.mask_processor.blur(mask, blur_factor=blur) if blur > 0 else mask
    return [pipe.image_processor.apply_overlay(soft, init_image, image) for image in images]


def _step_callback(conditioning, progress, interrupt, iteration: int, request: GenerateRequest, total: int):
    """diffusers `callback_on_step_end` chaining the prompt schedule, progress and interrupt; None when there is
    nothing to do per step (no schedule, no listener), so a plain generation pays nothing."""
    scheduled = len(conditioning.positive) > 1 or len(conditioning.negative) > 1
    if not (scheduled or progress or interrupt):
        return None

    def on_step_end(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        if scheduled:
            callback_kwargs = conditioning.step_callback(pipe, step, timestep, callback_kwargs)
        if progress is not None:
            progress(Progress(iteration, request.n_iter, step + 1, pipe.num_timesteps, iteration * request.batch_size,
                              request.batch_size, total, callback_kwargs.get("latents")))
        if interrupt is not None and interrupt():
            pipe._interrupt = True  # diffusers' documented way to stop a pipeline from its callback
        return callback_kwargs

    return on_step_end


def _infotext_params(request: GenerateRequest, model: LoadedModel, seed: int, loras: list[ResolvedLora],
                     extra: dict[str, str]) -> dict[str, Any]:
    """The `key: value` fields of one image, in A1111 1.10's order (None = left out)."""
    return {
        "Steps": request.steps,
        "Sampler": request.sampler,
        "Schedule type": request.schedule_type,
        "CFG scale": format_number(request.cfg_scale),
        "Seed": seed,
        "Size": f"{request.width}x{request.height}",
        "Model hash": model.short_hash,
        "Model": model.name,
        "Denoising strength": format_number(request.denoising_strength) if request.mode != "txt2img" else None,
        "Clip skip": request.clip_skip if request.clip_skip > 1 else None,
        "Mask blur": request.mask_blur if request.mode == "inpaint" else None,
        "Lora hashes": lora_hashes_text(loras),
        **extra,
    }


def _infotext(prompt: str, negative: str, params: dict[str, Any]) -> str:
    from huabu.core.pnginfo import create_infotext

    return create_infotext(prompt, negative, params, huabu.__version__)
