"""The one generation path: a GenerateRequest or VideoRequest in, images or a video with their A1111 infotexts out.

CLI, web UI and HTTP API all call `Engine.generate` / `Engine.generate_video`; none of them re-implements any of it.
Both share `huabu.engine.job`: one prepare step (sampler, seed, size, prompts, LoRAs, input images, ControlNet
units, model), one prompt encoding, one step callback, one infotext builder and one save. Stills run the diffusers
pipeline of the requested mode once per `n_iter` with one CPU generator per image (image i uses seed + i, as in
A1111); videos run the pipelines of `huabu.engine.video`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from huabu.core.gallery import Gallery
from huabu.core.requests import GenerateRequest, VideoRequest
from huabu.core.settings import Settings
from huabu.engine.controlnets import ControlNetManager
from huabu.engine.denoisers import call_parameters, step_callback_kwargs
from huabu.engine.extensions import Extension, PromptSchedule
from huabu.engine.hires import HiresFix
from huabu.engine.infotext import build_infotext, output_params
from huabu.engine.inpaint_area import LATENT_NOISE, LATENT_NOTHING, keep_outside, latent_mask, use_latent_fill
from huabu.engine.ip_adapters import IPAdapterManager
from huabu.engine.job import (
    Job,
    Progress,
    Prompter,
    callback_tensors,
    encode_prompts,
    prepare,
    save_output,
    step_callback,
)
from huabu.engine.loras import apply_loras, resolve_loras
from huabu.engine.models import LoadedModel, ModelManager
from huabu.engine.noise import (
    batch_noise,
    batch_seeds,
    generators,
    seed_noise,
    seeded_global_rng,
    step_seed_delta,
    use_noise_in_add_noise,
    wants_noise,
)
from huabu.engine.pipelines import decode_latents, mode_pipeline, pipeline_mode
from huabu.engine.upscalers import Upscalers
from huabu.engine.vaes import find_vae, load_vae, swapped_vae, vae_hash
from huabu.engine.video import VideoResult, run_video, video_target

if TYPE_CHECKING:
    from huabu.engine.prompts.book import PromptBook

log = logging.getLogger(__name__)


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


class Engine:
    """Runs requests on models from a ModelManager. One generation at a time (a lock guards the models)."""

    def __init__(self, settings: Settings, models: ModelManager | None = None, gallery: Gallery | None = None) -> None:
        self.settings = settings
        self.models = models or ModelManager(settings)
        self._gallery = gallery
        self._lock = threading.Lock()
        self.controlnets = ControlNetManager(settings)
        self.ip_adapters = IPAdapterManager(settings)
        self.upscalers = Upscalers(settings.upscalers_dir)
        self._vae: tuple[Any, Any] = (None, None)  # (file and model it was loaded for, the AutoencoderKL)
        self.prompter = Prompter(settings.loras_dir, self.models.hashes, settings.allow_unsafe_pickle,
                                 self.prompt_book, settings.embeddings_dir)

    @property
    def gallery(self) -> Gallery:
        if self._gallery is None:
            self._gallery = Gallery(self.settings.gallery_db)
        return self._gallery

    def prompt_book(self, model: str | None = None) -> PromptBook:
        """The shipped prompt book with model `model`'s own merged over it, when its folder carries one."""
        return self.models.prompt_book(model)

    def generate(self, request: GenerateRequest, progress: Callable[[Progress], None] | None = None,
                 interrupt: Callable[[], bool] | None = None, save: bool = False,
                 outdir: str | Path | None = None, extensions: Sequence[Extension] = ()) -> GenerationResult:
        """Generate `request.batch_size * request.n_iter` images.

        `progress` is called after every sampling step; when `interrupt()` turns true the current pipeline call stops
        (diffusers' `_interrupt` flag), its partly denoised images are returned and no further iterations run.
        `save=True` writes PNGs with the `parameters` chunk into `outdir` (default: settings.outputs_dir) and indexes
        them in the gallery. `extensions` join the run beside the request's own (an app's infotext fields, say).
        """
        with self._lock:
            return self._generate(request, progress, interrupt, save, outdir, tuple(extensions))

    def generate_video(self, request: VideoRequest, progress: Callable[[Progress], None] | None = None,
                       interrupt: Callable[[], bool] | None = None, save: bool = False,
                       output: str | Path | None = None) -> VideoResult:
        """Generate one video for a VideoRequest: the same models, prompt syntax, samplers, LoRAs, progress and
        interrupt as `generate`. `save=True` writes it to `output` (a .mp4/.webm/.gif path, or a folder; default:
        settings.outputs_dir) with its parameters and indexes it in the gallery as kind "video"."""
        with self._lock:
            return self._generate_video(request, progress, interrupt, save, output)

    # --- stills -------------------------------------------------------------------------------------------------

    def _generate(self, request, progress, interrupt, save, outdir, added: tuple = ()) -> GenerationResult:
        if request.script is not None:
            return self._script(request, progress, interrupt, save, outdir)
        job = prepare(request, self.models, self.prompter)
        if job.request.vae is None:
            return self._stills(job, progress, interrupt, save, outdir, None, added)
        ref = find_vae(job.request.vae, self.settings.vae_dir)
        key = (str(ref.path), id(job.model.pipeline))
        if self._vae[0] != key:  # the last VAE stays loaded: a client usually asks for the same one again
            self._vae = (key, load_vae(ref, job.model.pipeline.vae, self.settings.allow_unsafe_pickle))
        job.request = job.request.model_copy(update={"vae": ref.name})
        with swapped_vae(job.model, self._vae[1]):
            return self._stills(job, progress, interrupt, save, outdir, vae_hash(ref, self.models.hashes), added)

    def _stills(self, job: Job, progress, interrupt, save, outdir, vae_hash: str | None,
                added: tuple = ()) -> GenerationResult:
        with ExitStack() as attached:  # what joins the model for this run only (IP-Adapters) leaves it after
            return self._stills_attached(job, progress, interrupt, save, outdir, vae_hash, attached, added)

    def _stills_attached(self, job: Job, progress, interrupt, save, outdir, vae_hash: str | None,
                         attached: ExitStack, added: tuple = ()) -> GenerationResult:
        used, model = job.request, job.model
        control = self.controlnets.plan(job.control_units, model) if job.control_units else None
        ip = (self.ip_adapters.plan(job.ip_adapters, model, first_number=len(job.control_units))
              if job.ip_adapters else None)
        pipe = control.pipeline(model, used.mode, used.cfg_scale) if control else mode_pipeline(model, used.mode)
        # an adapter's own LoRA (FaceID's kind) goes with it; the adapter's infotext field stands for it
        adapter_loras = resolve_loras(ip.lora_specs(), self.settings.loras_dir, self.models.hashes) if ip else []
        loras = job.loras + adapter_loras
        apply_loras(pipe, loras, model.lora_targets, model.lora_active)

        scheduler = job.scheduler()
        conditioning = encode_prompts(model, used.clip_skip, job.text, job.negative_text,
                                      used.steps * scheduler.order, used.batch_size)
        extensions = [PromptSchedule(conditioning), *([control] if control else []), *([ip] if ip else []), *added]
        inputs = _mode_inputs(model, pipe, used, job.init_image, job.mask)
        if control:
            inputs.update(control.inputs(pipe, used.width, used.height))
        shared = attached.enter_context(ip.attached(pipe, used.cfg_scale, used.batch_size)) if ip else {}
        inputs.update(shared)
        hires = HiresFix(job, self.upscalers, encode_prompts, control) if used.enable_hr else None
        if hires is not None and hires.loras is not None:  # the adapters act in its pass too
            hires.loras = hires.loras + adapter_loras
        extra = {k: v for extension in extensions for k, v in extension.infotext_params().items()}
        total = used.batch_size * used.n_iter
        used_loras = job.loras + [lora for lora in (job.hires_loras or []) if lora not in job.loras]
        result = GenerationResult([], [], [], used, model.info())
        for iteration in range(used.n_iter):
            seeds, subseeds = batch_seeds(used, iteration)
            # Brownian noise seeded per image (core.samplers.scheduler_config)
            if job.sampler.scheduler == "DPMSolverSDEScheduler":
                scheduler = job.scheduler(seeds)
            pipe.scheduler = scheduler
            if hires is not None and hires.loras is not None:  # the last hires pass ran with its own LoRAs
                apply_loras(pipe, loras, model.lora_targets, model.lora_active)
            report = _still_report(iteration, used, total, later=hires.steps if hires else 0)
            callback = step_callback(extensions, report, progress, interrupt)
            latents = self._run(model, pipe, used, conditioning, inputs, seeds, subseeds, callback, extensions,
                                job.mask)
            decoder = pipe
            if hires is not None and not getattr(pipe, "interrupt", False):
                first_steps = pipe.num_timesteps
                second = _hires_callback(iteration, used, total, first_steps, hires, progress, interrupt)
                latents, decoder = hires.run(pipe, latents, seeds, subseeds, second, shared)
            latents = model.denoiser.spatial_latents(latents, used.width, used.height)
            images, model.vae_needs_fp32 = decode_latents(decoder, latents, model.vae_needs_fp32)
            if used.mode == "inpaint":
                images = _overlay(pipe, images, job.init_image, job.mask, used.mask_blur, bool(used.outpaint))
            if job.area is not None:
                images = [job.area.paste(image, used.mask_blur) for image in images]
            for index, (seed, image) in enumerate(zip(seeds, images)):
                params = output_params(used, model, used_loras, extra, seed=seed,
                                       subseed=subseeds[index] if subseeds else None, vae_hash=vae_hash,
                                       embeddings=job.embeddings)
                infotext = build_infotext(job.prompt, job.negative, params)
                result.images.append(image)
                result.seeds.append(seed)
                result.infotexts.append(infotext)
                if save:
                    self._save_image(image, seed, infotext, job, params, outdir, result)
            if getattr(pipe, "interrupt", False) or getattr(decoder, "interrupt", False):
                result.interrupted = True
                break
        return result

    def _script(self, request, progress, interrupt, save, outdir) -> GenerationResult:
        """An A1111 script (huabu.engine.scripts): its runs go through `_generate` under the lock already held."""
        from huabu.engine.scripts import run_script

        folder = (Path(outdir) if outdir is not None else self.settings.outputs_dir) if save else None
        output = run_script(request, lambda cell: self._generate(cell, progress, interrupt, save, outdir), folder)
        return GenerationResult(**vars(output))

    def _run(self, model: LoadedModel, pipe, request: GenerateRequest, conditioning, inputs: dict, seeds: list[int],
             subseeds: list[int], callback, extensions, mask=None):
        """One pipeline call: the latents of `seeds`."""
        delta = step_seed_delta(request, request.sampler)
        call = dict(num_inference_steps=request.steps, guidance_scale=request.cfg_scale,
                    generator=generators(seeds, delta), num_images_per_prompt=1, output_type="latent",
                    **conditioning.initial_kwargs(), **inputs)
        if wants_noise(request) or delta:  # ENSD: the start noise stays the seed's own
            call.update(_noise_inputs(model, pipe, request, inputs, seeds, subseeds))
        if mask is not None and request.inpainting_fill in (LATENT_NOISE, LATENT_NOTHING):
            _latent_fill(model, pipe, request, mask, seeds)
        call.update(model.denoiser.call_options(pipe))
        call.update(model.denoiser.start_latents(pipe, call))
        if callback is not None:
            call.update(step_callback_kwargs(pipe, callback, callback_tensors(extensions)))
        # Some pipelines draw from torch's global generator, not the call's (the flow pipelines' stochastic Euler
        # steps, SD3 ControlNets' control latents): seeded per call, so a request makes the same picture each time.
        with seeded_global_rng(seeds[0] + delta):
            return pipe(**call).images

    def _save_image(self, image, seed: int, infotext: str, job: Job, params: dict, outdir, result) -> None:
        folder = Path(outdir) if outdir is not None else self.settings.outputs_dir
        path, gallery_id = save_output(lambda path: _write_png(image, path, infotext), folder, seed, "png",
                                       self.gallery, job.request.mode, job.prompt, job.negative, params)
        result.paths.append(path)
        result.gallery_ids.append(gallery_id)

    # --- video --------------------------------------------------------------------------------------------------

    def _generate_video(self, request, progress, interrupt, save, output) -> VideoResult:
        target = video_target(output, request.format, self.settings.outputs_dir) if save else None
        job = prepare(request, self.models, self.prompter)
        if target is not None:
            job.request = job.request.model_copy(update={"format": target.format})
        result = run_video(job, self.settings, self.models.hashes, self.controlnets, progress, interrupt)
        if save and result.frames:
            from huabu.engine.video_export import write_video

            fps = result.request_used.fps

            def write(path: Path) -> Path:
                write_video(result.frames, path, fps, result.infotext)
                return path

            result.path, result.gallery_id = save_output(write, target.folder, result.seed, target.format,
                                                         self.gallery, "video", job.prompt, job.negative,
                                                         result.params, path=target.file)
        return result


def _write_png(image: Image.Image, path: Path, infotext: str) -> Path:
    from huabu.core import pnginfo

    return pnginfo.save_png_atomic(image, path, infotext)


def _still_report(iteration: int, request: GenerateRequest, total: int, done: int = 0,
                  later: int = 0) -> Callable[[Any, int, dict], Progress]:
    """Progress of a pipeline call's steps; `done` steps ran before it (the hires fix's first pass) and `later`
    come after it (its second pass), so one bar covers both."""
    def report(pipe, step: int, callback_kwargs: dict) -> Progress:
        return Progress(iteration, request.n_iter, done + step + 1, done + pipe.num_timesteps + later,
                        iteration * request.batch_size, request.batch_size, total, callback_kwargs.get("latents"))

    return report


def _hires_callback(iteration: int, request: GenerateRequest, total: int, first_steps: int, hires: HiresFix,
                    progress, interrupt) -> Callable[[Any], Any]:
    """The step callback of the hires pass, given its conditioning: its prompt schedule, progress, interrupt."""
    def make(conditioning):
        report = _still_report(iteration, request, total, done=first_steps)
        return step_callback([PromptSchedule(conditioning)], report, progress, interrupt)

    return make


def _latent_fill(model: LoadedModel, pipe, request: GenerateRequest, mask, seeds: list[int]) -> None:
    """inpainting_fill 2 / 3: the masked latents start from each seed's noise, or from nothing."""
    factor = model.vae_scale_factor
    size = (request.width // factor, request.height // factor)
    noise = seed_noise(seeds, (pipe.vae.config.latent_channels, size[1], size[0]), model.denoiser.dtype)
    use_latent_fill(pipe.scheduler, latent_mask(mask, size), request.inpainting_fill, noise)


def _noise_inputs(model: LoadedModel, pipe, request: GenerateRequest, inputs: dict, seeds: list[int],
                  subseeds: list[int]) -> dict[str, Any]:
    """Variation seeds and seed resize (huabu.engine.noise): txt2img (and an inpaint pipeline at strength 1) take
    the noise as their start latents; img2img and inpaint below 1 add it to the input's latents."""
    factor = model.vae_scale_factor
    noise = batch_noise(request, seeds, subseeds, pipe.vae.config.latent_channels,
                        (request.width // factor, request.height // factor), factor, model.denoiser.dtype)
    mode = pipeline_mode(model, request.mode)
    if mode == "txt2img" or (mode == "inpaint" and inputs.get("strength") == 1.0):
        return {"latents": noise}
    use_noise_in_add_noise(pipe.scheduler, noise)
    return {}


def _mode_inputs(model: LoadedModel, pipe, request: GenerateRequest, init_image, mask) -> dict[str, Any]:
    """Pipeline arguments of the mode. A 9-channel inpainting UNet runs every mode in the inpaint pipeline: txt2img
    as a fully masked grey image at strength 1, img2img as a fully masked input (A1111 does the same). SD img2img
    takes its size from the image; pipelines that take a size (FLUX's would else use its default) are given it."""
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
        size_inputs = inputs if "height" in call_parameters(pipe) else {}
        return {"image": [image] * batch, "strength": strength, **size_inputs}
    inputs.update(image=[image] * batch, mask_image=[mask] * batch, strength=strength)
    return inputs


def _overlay(pipe, images: list, init_image: Image.Image, mask: Image.Image, blur: int, outpaint: bool) -> list:
    """Paste the original back outside the (blurred) mask, as A1111 does after inpainting: the VAE round trip
    never returns exactly the pixels it was given. Outpainting blurs only into the new border."""
    if outpaint:
        soft = keep_outside(mask, blur)
    else:
        soft = pipe.mask_processor.blur(mask, blur_factor=blur) if blur > 0 else mask
    return [pipe.image_processor.apply_overlay(soft, init_image, image) for image in images]
