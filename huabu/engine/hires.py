"""A1111's hires fix: the txt2img result upscaled (in latent space, or decoded and upscaled in pixels) and
repainted by an img2img pass of the same model at the larger size.

Semantics follow A1111's StableDiffusionProcessingTxt2Img: `hr_scale` or `hr_resize_x/y` (one of them keeps the
aspect; both crop to fit), `hr_second_pass_steps` steps actually run (0: the first pass's steps) at
`denoising_strength`, optional hires prompt, negative prompt and sampler, and the second pass's noise drawn from
the same seeds (and variation seeds) at the larger size. The pass is an img2img run of the loaded model
(huabu.engine.pipelines), so LoRAs, prompt syntax and samplers act in it as in the first pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from huabu.core.errors import InvalidRequest
from huabu.core.requests import GenerateRequest
from huabu.core.samplers import parse_sampler
from huabu.core.upscalers import LATENT_UPSCALE_MODES
from huabu.engine.controlnets import encoded_words
from huabu.engine.loras import apply_loras
from huabu.engine.noise import batch_noise, generators, step_seed_delta, use_noise_in_add_noise, wants_noise
from huabu.engine.pipelines import decode_latents, mode_pipeline
from huabu.engine.prompts.syntax import extract_loras
from huabu.engine.samplers import build_scheduler
from huabu.engine.upscalers import Upscalers

if TYPE_CHECKING:
    from huabu.engine.controlnets import ControlPlan
    from huabu.engine.job import Job


@dataclass(frozen=True)
class HiresSize:
    """Where the second pass ends: upscale the first pass to (width, height), then trim crop_x / crop_y pixels
    (half each side) when hr_resize_x and hr_resize_y ask for another aspect."""

    width: int
    height: int
    crop_x: int = 0
    crop_y: int = 0

    @property
    def output(self) -> tuple[int, int]:
        return self.width - self.crop_x, self.height - self.crop_y


def hires_size(request: GenerateRequest, factor: int) -> HiresSize:
    """A1111's calculate_target_resolution, on multiples of the VAE factor (A1111's 8)."""
    width, height = request.width, request.height
    rx, ry = request.hr_resize_x, request.hr_resize_y
    crop_x = crop_y = 0
    if not rx and not ry:
        to_x, to_y = int(width * request.hr_scale), int(height * request.hr_scale)
    elif not ry:
        to_x, to_y = rx, rx * height // width
    elif not rx:
        to_x, to_y = ry * width // height, ry
    else:
        if width / height < rx / ry:
            to_x, to_y = rx, rx * height // width
        else:
            to_x, to_y = ry * width // height, ry
        crop_x, crop_y = (to_x - rx) // factor * factor, (to_y - ry) // factor * factor
    return HiresSize(to_x // factor * factor, to_y // factor * factor, crop_x, crop_y)


def second_pass_steps(steps: int, strength: float) -> int:
    """num_inference_steps for diffusers' img2img so that it runs `steps` steps at `strength` (it runs
    int(num_inference_steps * strength)); A1111 likewise stretches the schedule to run exactly that many."""
    total = int(steps / min(strength, 0.999))
    while int(total * strength) < steps:
        total += 1
    return total


class HiresFix:
    """The second pass of one job: built once, run once per pipeline call on the first pass's latents."""

    def __init__(self, job: Job, upscalers: Upscalers, encode: Callable[..., Any],
                 control: ControlPlan | None = None) -> None:
        request, model = job.request, job.model
        if model.is_inpaint_unet:
            raise InvalidRequest("the hires fix needs a txt2img model; this one has a 9-channel inpainting UNet")
        self.request, self.model = request, model
        self.control = control  # its units act in both passes, their maps fitted to each pass's size (as
        # sd-webui-controlnet does)
        self.size = hires_size(request, model.vae_scale_factor)
        self.latent_mode = LATENT_UPSCALE_MODES.get(request.hr_upscaler)
        self.pixel = None if self.latent_mode else upscalers.get(request.hr_upscaler)
        self.steps = request.hr_second_pass_steps or request.steps
        self.sampler = request.hr_sampler or request.sampler
        self.loras = job.hires_loras  # None: the first pass's stay active
        self.total_steps = second_pass_steps(self.steps, request.denoising_strength)
        self.prompt = (encoded_words(extract_loras(request.hr_prompt)[0], job.control_units) if request.hr_prompt
                       else job.text)
        self.negative = request.hr_negative_prompt or job.negative_text
        self.encode = encode
        self.conditioning: Any = None  # encoded on the first run, under the pass's LoRAs (text-encoder weights count)

    def scheduler(self, seeds: list[int]) -> Any:
        sampler, schedule = parse_sampler(self.sampler, self.request.schedule_type)
        sde = sampler.scheduler == "DPMSolverSDEScheduler"
        return build_scheduler(sampler.name, self.request.schedule_type, self.model.scheduler_config,
                               seeds if sde else None, self.request.shift)

    def run(self, first_pipe: Any, latents: Any, seeds: list[int], subseeds: list[int],
            callback: Callable[[Any], Any] | None, inputs: dict[str, Any] | None = None) -> tuple[Any, Any]:
        """(the second pass's latents, the pipeline that made them). `callback(conditioning)` gives the step
        callback of the pass (or None); `inputs` are pipeline arguments the first pass's extensions share with it
        (IP-Adapter image embeddings)."""
        cfg_scale = self.request.cfg_scale
        pipe = self.control.pipeline(self.model, "img2img", cfg_scale) if self.control else mode_pipeline(
            self.model, "img2img")
        if self.loras is not None:
            apply_loras(pipe, self.loras, self.model.lora_targets, self.model.lora_active)
        if self.conditioning is None:
            self.conditioning = self.encode(self.model, self.request.clip_skip, self.prompt, self.negative,
                                            self.total_steps, self.request.batch_size)
        pipe.scheduler = self.scheduler(seeds)
        image = self._upscaled(first_pipe, latents)
        width, height = self.size.output
        factor = self.model.vae_scale_factor
        delta = step_seed_delta(self.request, self.sampler)
        if wants_noise(self.request) or delta:
            noise = batch_noise(self.request, seeds, subseeds, latents.shape[1], (width // factor, height // factor),
                                factor, latents.dtype)
            use_noise_in_add_noise(pipe.scheduler, noise)
        call = dict(image=image, strength=self.request.denoising_strength, num_inference_steps=self.total_steps,
                    guidance_scale=cfg_scale, generator=generators(seeds, delta), num_images_per_prompt=1,
                    output_type="latent", **self.conditioning.initial_kwargs(), **(inputs or {}))
        if self.control:
            call.update(self.control.inputs(pipe, width, height))
        step = callback(self.conditioning) if callback else None
        if step is not None:
            call["callback_on_step_end"] = step
            call["callback_on_step_end_tensor_inputs"] = ["latents", *self.conditioning.callback_tensor_inputs]
        return pipe(**call).images, pipe

    def _upscaled(self, first_pipe: Any, latents: Any) -> Any:
        """What the second pass starts from: latents resized in latent space, or decoded images upscaled."""
        import torch

        factor = self.model.vae_scale_factor
        size = self.size
        if self.latent_mode:
            mode, antialias = self.latent_mode
            scaled = torch.nn.functional.interpolate(latents, size=(size.height // factor, size.width // factor),
                                                     mode=mode, antialias=antialias)
            top, left = size.crop_y // factor // 2, size.crop_x // factor // 2
            bottom, right = (size.crop_y // factor + 1) // 2, (size.crop_x // factor + 1) // 2
            return scaled[:, :, top:scaled.shape[2] - bottom, left:scaled.shape[3] - right]
        images, self.model.vae_needs_fp32 = decode_latents(first_pipe, latents, self.model.vae_needs_fp32)
        width, height = size.output
        left, top = size.crop_x // 2, size.crop_y // 2
        return [self.pixel(image, (size.width, size.height)).crop((left, top, left + width, top + height))
                for image in images]

