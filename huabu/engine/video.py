"""Video pipelines: the frames of a prepared video Job (huabu.engine.job), with its infotext.

`Engine.generate_video` is the entry point: it prepares the job as for stills and saves the result; this module
runs it. What makes the video depends on the model, read from its diffusers class:

- an SD 1.x-shaped model plus an AnimateDiff motion module (diffusers MotionAdapter). `AnimateDiffPipeline.from_pipe`
  shares the model's VAE, text encoder and tokenizer with the still pipelines; its UNet becomes a UNetMotionModel
  into which diffusers copies the 2D weights, so that pipeline is built once per (model, motion module) and cached
  in the LoadedModel beside the still pipelines;
- a ModelScope text-to-video model (TextToVideoSDPipeline; VideoToVideoSDPipeline when an image is given);
- an I2VGen-XL model (I2VGenXLPipeline), which animates an image.

Image-to-video with AnimateDiff: the image is VAE-encoded and noised to `denoising_strength` for every frame
(AnimateDiff's video-to-video pipeline run on a still video), and frame 0's latents are replaced at every step by
the image's latents noised to the next step's level, as diffusers' inpaint pipeline does for 4-channel UNets: frame
0 ends on the image and the motion module carries it into the other frames. A SparseCtrl RGB model conditions frame
0 instead when the user has one. ControlNet units work as for stills (every frame gets the unit's control map)
through diffusers' AnimateDiff ControlNet pipelines. The motion module, SparseCtrl, ControlNet and the anchor are
extensions of the run (huabu.engine.extensions).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from huabu.core.errors import InvalidRequest
from huabu.core.fields import format_number
from huabu.core.requests import MAX_SEED, VideoRequest
from huabu.core.settings import Settings
from huabu.engine import checkpoints
from huabu.engine.controlnets import ControlNetManager
from huabu.engine.extensions import Extension, PromptSchedule, is_scheduled
from huabu.engine.infotext import build_infotext, output_params
from huabu.engine.job import Job, Progress, callback_tensors, encode_prompts, step_callback
from huabu.engine.loras import ResolvedLora, apply_loras
from huabu.engine.models import LoadedModel, PipelineKey
from huabu.engine.motion_modules import (
    MotionModuleRef,
    disk_stamp,
    load_motion_adapter,
    load_sparse_control,
    motion_module_hash,
    motion_text_lora,
    motion_words_file,
    resolve_motion_module,
)
from huabu.engine.pipelines import decode_latents

log = logging.getLogger(__name__)

ANIMATEDIFF, MODELSCOPE, I2VGEN_XL = "AnimateDiff", "ModelScope", "I2VGen-XL"
_VIDEO_CLASSES = {"TextToVideoSDPipeline": MODELSCOPE, "I2VGenXLPipeline": I2VGEN_XL}
_MOTION_KINDS = ("animatediff", "img2vid", "sparsectrl")  # pipelines holding a motion UNet
_DECODE_CHUNK = 8  # frames per VAE decode: bounds decoder memory on long videos


@dataclass
class VideoResult:
    frames: list[Image.Image]
    seed: int
    infotext: str
    request_used: VideoRequest  # seed, size, sampler, schedule and format as actually used
    model: dict[str, Any]  # LoadedModel.info()
    pipeline: str  # ANIMATEDIFF, MODELSCOPE or I2VGEN_XL
    params: dict[str, Any]  # the infotext's key: value fields
    first_frame: dict[str, float] | None = None  # image-to-video: first_frame_fidelity(image, frames[0])
    path: Path | None = None  # the saved video (save=True)
    gallery_id: int | None = None
    interrupted: bool = False


@dataclass(frozen=True)
class VideoTarget:
    file: Path | None  # None: a numbered name in `folder`
    folder: Path
    format: str


def video_target(output: str | Path | None, fmt: str, default_folder: Path) -> VideoTarget:
    """Where a video goes: `output` with a video extension is the file, otherwise a folder (default: the outputs
    folder)."""
    from huabu.engine.video_export import VIDEO_FORMATS, video_format

    if output is None:
        return VideoTarget(None, default_folder, fmt)
    output = Path(output)
    if output.suffix.lower().lstrip(".") in VIDEO_FORMATS:
        return VideoTarget(output, output.parent, video_format(output))
    if output.suffix and not output.is_dir():
        video_format(output)  # raises: a file name with an extension that is no video format
    return VideoTarget(None, output, fmt)


def video_kind(model: LoadedModel) -> str:
    """ANIMATEDIFF for an SD 1.x/2.x-shaped model, else the video model family its pipeline class names."""
    kind = _VIDEO_CLASSES.get(type(model.pipeline).__name__)
    if kind:
        return kind
    denoiser = model.denoiser
    if model.is_sdxl or model.is_inpaint_unet or type(denoiser.module).__name__ != "UNet2DConditionModel":
        what = ("an SDXL" if model.is_sdxl else "an inpainting" if model.is_inpaint_unet
                else f"a {denoiser.label} (transformer)" if denoiser.is_transformer else "this")
        raise InvalidRequest(f"{model.name} is {what} model; video needs an SD 1.x-shaped model with an AnimateDiff "
                             f"motion module, or a ModelScope / I2VGen-XL video model")
    return ANIMATEDIFF


# --- extensions of a video run ----------------------------------------------------------------------------------

@dataclass
class MotionModule(Extension):
    """The motion module, with what was trained beside it: a text LoRA (applied with the module, not listed among
    the prompt's LoRAs) and motion words (their layers live in the motion pipeline's UNet; their word rows replace
    the text encoder's own only while the prompt is encoded, since the still pipelines share that encoder)."""

    ref: MotionModuleRef
    hash: str | None
    text_lora: ResolvedLora | None
    words_hash: str | None
    word_rows: Any = None  # huabu.engine.motion_words.WordRows

    @contextmanager
    def encoding(self, text_encoder) -> Iterator[None]:
        handle = self.word_rows.attach(text_encoder) if self.word_rows is not None else None
        try:
            yield
        finally:
            if handle is not None:
                handle.remove()

    def infotext_params(self) -> dict[str, Any]:
        params = {"Motion module": self.ref.name, "Motion module hash": self.hash}
        if self.text_lora is not None:
            params["Motion text LoRA"] = self.text_lora.short_hash
        if self.words_hash is not None:
            params["Motion words"] = self.words_hash
        return params


@dataclass
class SparseControl(Extension):
    """A SparseCtrl RGB model conditioning frame 0 on the input image."""

    name: str
    location: str
    model: Any
    scale: float

    def inputs(self, image: Image.Image, frames: int) -> dict[str, Any]:
        return {"num_frames": frames, "conditioning_frames": [image], "controlnet_frame_indices": [0],
                "controlnet_conditioning_scale": self.scale}

    def infotext_params(self) -> dict[str, Any]:
        return {"SparseCtrl": self.name, "SparseCtrl weight": format_number(self.scale)}


@dataclass
class FirstFrameAnchor(Extension):
    """Frame 0 := the image's latents noised to the level of the next step (clean after the last one), as
    diffusers' inpaint pipeline does for 4-channel UNets: frame 0 ends on the image."""

    image_latents: Any
    noise: Any

    @property
    def acts_per_step(self) -> bool:
        return True

    def on_step_end(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        timesteps = pipe.scheduler.timesteps
        # The loop runs a tail of the scheduler's timesteps (image-to-video skips the noisiest ones).
        following = len(timesteps) - pipe.num_timesteps + step + 1
        if following < len(timesteps):
            target = pipe.scheduler.add_noise(self.image_latents, self.noise, timesteps[following:following + 1])
        else:
            target = self.image_latents
        latents = callback_kwargs["latents"].clone()
        latents[:, :, 0] = target.to(latents.dtype)
        callback_kwargs["latents"] = latents
        return callback_kwargs

    def infotext_params(self) -> dict[str, Any]:
        return {"First frame": "anchored"}


# --- one video run --------------------------------------------------------------------------------------------

@dataclass
class VideoRun:
    """A prepared Job plus what a video run adds to it: the engine's settings and managers, the listeners, and the
    extensions in infotext order."""

    job: Job
    settings: Settings
    hashes: checkpoints.HashCache
    controlnets: ControlNetManager
    progress: Callable[[Progress], None] | None
    interrupt: Callable[[], bool] | None
    extensions: list[Extension] = field(default_factory=list)
    motion: MotionModule | None = None
    conditioning: Any = None  # ScheduledConditioning (batch 1), made by ready()

    def ready(self, pipe, scheduler) -> None:
        """Set the pipeline up: LoRAs first, since they change the text encoder that then encodes the prompt
        schedule (with the motion module's word rows attached), and the scheduler."""
        job = self.job
        text_lora = [self.motion.text_lora] if self.motion is not None and self.motion.text_lora else []
        apply_loras(pipe, [*job.loras, *text_lora], job.model.lora_targets, job.model.lora_active)
        pipe.scheduler = scheduler
        encoding = self.motion.encoding(job.model.pipeline.text_encoder) if self.motion else _nothing()
        with encoding:
            self.conditioning = encode_prompts(job.model, job.request.clip_skip, job.text, job.negative_text,
                                               job.request.steps * scheduler.order, 1)

    def infotext_extra(self) -> dict[str, Any]:
        return {k: v for extension in self.extensions for k, v in extension.infotext_params().items()}


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def run_video(job: Job, settings: Settings, hashes: checkpoints.HashCache, controlnets: ControlNetManager,
              progress: Callable[[Progress], None] | None, interrupt: Callable[[], bool] | None) -> VideoResult:
    """Make the video of a prepared job (Engine.generate_video holds the engine lock around this)."""
    from huabu.engine.metrics import first_frame_fidelity

    kind = video_kind(job.model)
    run = VideoRun(job, settings, hashes, controlnets, progress, interrupt)
    runner = {ANIMATEDIFF: _run_animatediff, MODELSCOPE: _run_modelscope, I2VGEN_XL: _run_i2vgen_xl}[kind]
    frames, interrupted = runner(run)

    used = job.request
    # I2VGen-XL takes the image as a condition, not as noised latents: no denoising strength to record.
    params = output_params(used, job.model, job.loras, run.infotext_extra(),
                           strength_used=False if kind == I2VGEN_XL else None, embeddings=job.embeddings)
    infotext = build_infotext(job.prompt, job.negative, params)
    result = VideoResult(frames, used.seed, infotext, used, job.model.info(), kind, params, interrupted=interrupted)
    if job.init_image is not None and frames:
        result.first_frame = first_frame_fidelity(job.init_image, frames[0])
    return result


# --- AnimateDiff ------------------------------------------------------------------------------------------------

def _run_animatediff(run: VideoRun) -> tuple[list[Image.Image], bool]:
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    job, request, model = run.job, run.job.request, run.job.model
    ref = resolve_motion_module(request.motion_module, run.settings, model.ref)
    pipe = _motion_pipeline(run.settings, model, ref)
    limit = int(pipe.unet.config.motion_max_seq_length)
    if request.frames > limit:
        raise InvalidRequest(f"motion module {ref.name} makes at most {limit} frames; ask for {limit} or fewer")
    run.motion = _motion_module(ref, run, model)
    run.extensions.append(run.motion)
    if request.sparse_control and job.control_units:
        raise InvalidRequest("use SparseCtrl or ControlNet units for a video, not both")
    call: dict[str, Any] = {"height": request.height, "width": request.width}
    if request.sparse_control:
        sparse = SparseControl(*load_sparse_control(request.sparse_control, run.settings),
                               request.sparse_control_scale)
        pipe = _derived_pipeline(model, PipelineKey("sparsectrl", pipe_motion(ref), sparse.location), pipe,
                                 controlnet=sparse.model)
        call.update(sparse.inputs(job.init_image, request.frames))
        run.extensions.append(sparse)
    elif job.init_image is not None:
        call.update(video=[job.init_image] * request.frames, strength=request.denoising_strength)
        pipe = _derived_pipeline(model, PipelineKey("img2vid", pipe_motion(ref)), pipe)
    else:
        call.update(num_frames=request.frames)
    if job.control_units:
        plan = run.controlnets.plan(job.control_units, model)
        run.extensions.append(plan)
        if plan.active:
            pipe = _with_controlnet(pipe, plan.controlnet(request.cfg_scale), "video" in call)
            call.update(plan.frame_inputs(pipe, request.width, request.height, request.frames))
    # DPM++ SDE seeds its Brownian noise per batch entry: here one video.
    run.ready(pipe, job.scheduler([request.seed]))

    generator = torch.Generator("cpu").manual_seed(request.seed)
    steps: list[Extension] = [PromptSchedule(dataclasses.replace(run.conditioning, batch_size=request.frames))]
    if job.init_image is not None and request.anchor_first_frame:
        image_latents = encode_image(model, job.init_image)
        noise = randn_tensor(image_latents.shape, generator=generator, device=image_latents.device,
                             dtype=image_latents.dtype)
        anchor = FirstFrameAnchor(image_latents, noise)
        steps.append(anchor)
        run.extensions.append(anchor)

    def report(pipe, step: int, callback_kwargs: dict) -> Progress:  # frame 0: what still previews decode
        return Progress(0, 1, step + 1, pipe.num_timesteps, 0, 1, 1, callback_kwargs["latents"][:, :, 0])

    # AnimateDiff holds the embeddings repeated per frame: [negative x frames, positive x frames], which the
    # schedule's batch-of-`frames` variant builds.
    callback = step_callback(steps, report, run.progress, run.interrupt)
    if callback is not None:
        call.update(callback_on_step_end=callback, callback_on_step_end_tensor_inputs=callback_tensors(steps))
    latents = pipe(num_inference_steps=request.steps, guidance_scale=request.cfg_scale, generator=generator,
                   output_type="latent", **run.conditioning.initial_kwargs(), **call).frames
    return decode_video(model, latents), bool(getattr(pipe, "interrupt", False))


def _motion_module(ref: MotionModuleRef, run: VideoRun, model: LoadedModel) -> MotionModule:
    words = motion_words_file(ref)
    module = MotionModule(ref, motion_module_hash(ref, run.hashes),
                          motion_text_lora(ref, run.settings.loras_dir, run.hashes),
                          checkpoints.short_hash(run.hashes.sha256(words)) if words is not None else None)
    if words is not None:
        from huabu.engine.motion_words import load_word_rows

        module.word_rows = load_word_rows(words, model.pipeline.tokenizer, model.pipeline.text_encoder)
    return module


def pipe_motion(ref: MotionModuleRef) -> str:
    """The motion part of a pipeline key: a module written again on disk gets a new key."""
    return f"{ref.location}|{disk_stamp(ref)}"


def _motion_pipeline(settings: Settings, model: LoadedModel, ref: MotionModuleRef):
    """The cached AnimateDiffPipeline for this model and motion module; another module, or this one changed on
    disk, replaces it and its variants (each holds a full copy of the UNet)."""
    from diffusers import AnimateDiffPipeline

    key = PipelineKey("animatediff", pipe_motion(ref))
    pipe = model.pipelines.get(key)
    if pipe is not None:
        return pipe
    adapter = load_motion_adapter(ref, settings)
    _check_adapter_fits(adapter, model, ref)
    for old in [k for k in model.pipelines if k.kind in _MOTION_KINDS]:
        del model.pipelines[old]
    base = model.pipeline
    pipe = AnimateDiffPipeline.from_pipe(base, unet=_without_lora_layers(base.unet), motion_adapter=adapter,
                                         dtype=base.dtype)
    pipe.to(base.device)  # the new motion UNet is built on the CPU
    words = motion_words_file(ref)
    if words is not None:  # hooked into this pipeline's own UNet, so every pipeline derived from it has them
        from huabu.engine.motion_words import attach_motion_words, load_motion_words

        attach_motion_words(pipe.unet, load_motion_words(words, pipe.unet))
    pipe.set_progress_bar_config(disable=True)
    model.pipelines[key] = pipe
    return pipe


def _derived_pipeline(model: LoadedModel, key: PipelineKey, motion_pipe, **components):
    """A cached AnimateDiff variant (video-to-video, SparseCtrl) sharing the motion pipeline's modules."""
    from diffusers import AnimateDiffSparseControlNetPipeline, AnimateDiffVideoToVideoPipeline

    pipe = model.pipelines.get(key)
    if pipe is None:
        cls = AnimateDiffSparseControlNetPipeline if key.kind == "sparsectrl" else AnimateDiffVideoToVideoPipeline
        pipe = cls.from_pipe(motion_pipe, dtype=motion_pipe.dtype, **components)
        pipe.to(motion_pipe.device)
        pipe.set_progress_bar_config(disable=True)
        model.pipelines[key] = pipe
    return pipe


def _with_controlnet(pipe, controlnet, video_to_video: bool):
    """The ControlNet variant of an AnimateDiff pipeline (text- or video-to-video) around the same modules."""
    from diffusers import AnimateDiffControlNetPipeline, AnimateDiffVideoToVideoControlNetPipeline

    cls = AnimateDiffVideoToVideoControlNetPipeline if video_to_video else AnimateDiffControlNetPipeline
    pipe = cls.from_pipe(pipe, controlnet=controlnet, dtype=pipe.dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _without_lora_layers(unet):
    """The UNet's own weights in a plain UNet2DConditionModel. LoRAs used for stills stay loaded in the base UNet
    as peft layers (their weights beside `base_layer`), which UNetMotionModel.from_unet2d's state-dict copy cannot
    read; the video pipeline gets its LoRAs itself (apply_loras)."""
    if not getattr(unet, "peft_config", None):
        return unet
    from diffusers import UNet2DConditionModel

    state = {k.replace(".base_layer.", "."): v for k, v in unet.state_dict().items() if ".lora_" not in k}
    plain = UNet2DConditionModel.from_config(unet.config)
    plain.load_state_dict(state)
    return plain.to(device=unet.device, dtype=unet.dtype)


def _check_adapter_fits(adapter, model: LoadedModel, motion: MotionModuleRef) -> None:
    unet = model.pipeline.unet.config
    mine, theirs = list(adapter.config.block_out_channels), list(unet.block_out_channels)
    layers = unet.layers_per_block
    layers = [layers] * len(theirs) if isinstance(layers, int) else list(layers)
    motion_layers = adapter.config.motion_layers_per_block
    motion_layers = [motion_layers] * len(mine) if isinstance(motion_layers, int) else list(motion_layers)
    if mine != theirs or motion_layers != layers:
        raise InvalidRequest(f"motion module {motion.name} was made for a UNet with channels {mine} and "
                             f"{motion_layers} layers per block, but {model.name} has {theirs} and {layers}")


def encode_image(model: LoadedModel, image: Image.Image):
    """The image's VAE latents (distribution mode), scaled as the UNet sees them: [1, C, h, w]."""
    import torch

    pipe = model.pipeline
    vae = pipe.vae
    pixels = pipe.image_processor.preprocess(image).to(device=vae.device, dtype=vae.dtype)
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mode()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def decode_video(model: LoadedModel, latents) -> list[Image.Image]:
    """[1, C, F, h, w] latents -> F PIL frames, decoded in chunks with the engine's VAE upcast rule."""
    frames_latents = latents[0].permute(1, 0, 2, 3)
    frames: list[Image.Image] = []
    for start in range(0, frames_latents.shape[0], _DECODE_CHUNK):
        chunk = frames_latents[start:start + _DECODE_CHUNK]
        images, model.vae_needs_fp32 = decode_latents(model.pipeline, chunk, model.vae_needs_fp32)
        frames.extend(images)
    return frames


class _Interrupted(Exception):
    """Raised from a UNet hook to stop a pipeline that has no step callback."""


@contextmanager
def _unet_steps(pipe, total: int, run: VideoRun) -> Iterator[None]:
    """Progress and interrupt for pipelines without `callback_on_step_end` (ModelScope, I2VGen-XL): a forward hook
    (torch's public API) counts UNet calls, one per sampling step since guidance runs as one batch."""
    calls = 0

    def after_unet(module, args, output) -> None:
        nonlocal calls
        calls += 1
        if run.progress is not None:
            run.progress(Progress(0, 1, min(calls, total), total, 0, 1, 1))
        if run.interrupt is not None and run.interrupt():
            raise _Interrupted

    handle = pipe.unet.register_forward_hook(after_unet)
    try:
        yield
    finally:
        handle.remove()


def _planned_steps(scheduler, steps: int, strength: float | None) -> int:
    run = steps if strength is None else min(int(steps * strength), steps)
    return max(1, run * scheduler.order)


def _refuse_animatediff_options(job: Job, kind: str) -> None:
    if job.control_units:
        raise InvalidRequest(f"ControlNet units work with AnimateDiff motion modules, not with {kind} models")
    if job.request.motion_module:
        raise InvalidRequest(f"{job.model.name} is a {kind} video model; it takes no motion module")
    if job.request.sparse_control:
        raise InvalidRequest(f"SparseCtrl works with AnimateDiff motion modules, not with {kind} models")


# --- ModelScope and I2VGen-XL -----------------------------------------------------------------------------------

def _run_modelscope(run: VideoRun) -> tuple[list[Image.Image], bool]:
    _refuse_animatediff_options(run.job, MODELSCOPE)
    request, model = run.job.request, run.job.model
    pipe, strength = model.pipeline, None
    call = {"num_frames": request.frames, "height": request.height, "width": request.width}
    if run.job.init_image is not None:
        key = PipelineKey("modelscope-img2vid")
        pipe = model.pipelines.get(key)
        if pipe is None:
            from diffusers import VideoToVideoSDPipeline

            pipe = VideoToVideoSDPipeline.from_pipe(model.pipeline, dtype=model.pipeline.dtype)
            pipe.set_progress_bar_config(disable=True)
            model.pipelines[key] = pipe
        strength = request.denoising_strength
        call = {"video": [run.job.init_image] * request.frames, "strength": strength}  # sized by the image
    run.extensions.append(_VideoModel(MODELSCOPE))
    return _plain_video_call(pipe, run, strength, **call)


def _run_i2vgen_xl(run: VideoRun) -> tuple[list[Image.Image], bool]:
    _refuse_animatediff_options(run.job, I2VGEN_XL)
    job = run.job
    if job.init_image is None:
        raise InvalidRequest(f"{job.model.name} is an I2VGen-XL model, which animates an image: pass --image")
    request = job.request
    run.extensions.append(_VideoModel(I2VGEN_XL))
    return _plain_video_call(job.model.pipeline, run, None, image=job.init_image, num_frames=request.frames,
                             target_fps=request.fps, height=request.height, width=request.width,
                             decode_chunk_size=_DECODE_CHUNK)


@dataclass
class _VideoModel(Extension):
    family: str

    def infotext_params(self) -> dict[str, Any]:
        return {"Video model": self.family}


def _plain_video_call(pipe, run: VideoRun, denoise: float | None, **call) -> tuple[list[Image.Image], bool]:
    """Run a ModelScope / I2VGen-XL pipeline with the hook-based progress; an interrupt returns no frames."""
    import torch

    job = run.job
    request = job.request
    # DPM++ SDE seeds its Brownian noise per batch entry: here one per frame.
    scheduler = job.scheduler([(request.seed + i) % (MAX_SEED + 1) for i in range(request.frames)])
    run.ready(pipe, scheduler)
    if is_scheduled(run.conditioning):
        raise InvalidRequest(f"prompt editing and alternation ([from:to:when], [a|b]) need an AnimateDiff model; "
                             f"{job.model.name}'s pipeline cannot change the prompt during sampling")
    generator = torch.Generator("cpu").manual_seed(request.seed)
    total = _planned_steps(scheduler, request.steps, denoise)
    try:
        with _unet_steps(pipe, total, run):
            frames = pipe(num_inference_steps=request.steps, guidance_scale=request.cfg_scale, generator=generator,
                          output_type="pil", **run.conditioning.initial_kwargs(), **call).frames[0]
    except _Interrupted:
        return [], True
    return list(frames), False
