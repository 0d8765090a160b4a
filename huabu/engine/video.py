"""Video generation: a VideoRequest in, frames with their A1111-style infotext out, on the engine's models.

`Engine.generate_video` is the entry point (same ModelManager, lock, progress and interrupt conventions as
`Engine.generate`). What makes the video depends on the model, read from its diffusers class:

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
through diffusers' AnimateDiff ControlNet pipelines.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from PIL import Image

import huabu
from huabu.core import samplers
from huabu.engine import checkpoints
from huabu.engine.samplers import build_scheduler
from huabu.engine.controlnets import check_units
from huabu.engine.generate import Progress, _output_size, format_number
from huabu.engine.images import load_image
from huabu.engine.loras import ResolvedLora, apply_loras, lora_hashes_text
from huabu.engine.models import _HUB_ID, LoadedModel, ModelRef, looks_like_path
from huabu.engine.pipelines import decode_latents
from huabu.core.errors import InvalidRequest, ModelNotFound, UnsafeCheckpoint, first_line
from huabu.core.requests import MAX_SEED, VideoRequest
from huabu.core.settings import Settings

if TYPE_CHECKING:
    from huabu.engine.generate import Engine
    from huabu.engine.motion_words import WordRows

log = logging.getLogger(__name__)

MOTION_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
ANIMATEDIFF, MODELSCOPE, I2VGEN_XL = "AnimateDiff", "ModelScope", "I2VGen-XL"
_VIDEO_CLASSES = {"TextToVideoSDPipeline": MODELSCOPE, "I2VGenXLPipeline": I2VGEN_XL}
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


# --- motion modules ------------------------------------------------------------------------------------------

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
    if _HUB_ID.match(spec) and path.suffix.lower() not in MOTION_SUFFIXES:
        return MotionModuleRef(spec, spec, "hub")
    names = ", ".join(ref.name for ref in available) or "nothing"
    raise ModelNotFound(f"unknown motion module {spec!r}: not a folder or file, and the motion folder "
                        f"{settings.motion_dir} holds {names}")


def motion_text_lora(ref: MotionModuleRef, engine: "Engine") -> ResolvedLora | None:
    """The cross-attention LoRA trained with a motion module (huabu.engine.motion_words.TEXT_LORA_FILE in its folder), at
    weight 1, or None."""
    from huabu.engine.loras import resolve_loras
    from huabu.engine.prompts.syntax import LoraRef
    from huabu.engine.motion_words import TEXT_LORA_FILE

    path = _beside_module(ref, TEXT_LORA_FILE)
    if path is None:
        return None
    return resolve_loras([LoraRef(str(path), 1.0)], engine.settings.loras_dir, engine.models.hashes)[0]


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
        "motion_transformer_layers_per_mid_block": count("mid_block.motion_modules.0.transformer_blocks.") if mid else 1,
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


# --- SparseCtrl ------------------------------------------------------------------------------------------------

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
    if not _HUB_ID.match(spec):
        raise ModelNotFound(f"SparseCtrl model {spec!r} not found: not a folder, and not in {settings.controlnet_dir}")
    from huggingface_hub import constants

    if settings.hub_offline or constants.HF_HUB_OFFLINE:
        raise ModelNotFound(f"SparseCtrl model {spec!r} is not a local folder and the hub is offline "
                            f"(HF_HUB_OFFLINE=1); download it first or pass a folder")
    try:
        return spec, spec, SparseControlNetModel.from_pretrained(spec, use_safetensors=True)
    except Exception as err:  # network and repository errors
        raise ModelNotFound(f"cannot load SparseCtrl model {spec!r} from the hub: {first_line(err)}") from None


# --- generation -----------------------------------------------------------------------------------------------

def video_kind(model: LoadedModel) -> str:
    """ANIMATEDIFF for an SD 1.x/2.x-shaped model, else the video model family its pipeline class names."""
    kind = _VIDEO_CLASSES.get(type(model.pipeline).__name__)
    if kind:
        return kind
    if model.is_sdxl or model.is_inpaint_unet or type(model.pipeline.unet).__name__ != "UNet2DConditionModel":
        what = "an SDXL" if model.is_sdxl else "an inpainting" if model.is_inpaint_unet else "this"
        raise InvalidRequest(f"{model.name} is {what} model; video needs an SD 1.x-shaped model with an AnimateDiff "
                             f"motion module, or a ModelScope / I2VGen-XL video model")
    return ANIMATEDIFF


@dataclass
class _Job:
    """Everything one video run needs, resolved."""

    model: LoadedModel
    request: VideoRequest  # as used
    text: str  # the prompt without its LoRA tags
    negative: str
    scheduler: Any
    init_image: Image.Image | None
    loras: list[ResolvedLora]
    control_units: list  # huabu.engine.controlnets.CheckedUnit
    progress: Callable[[Progress], None] | None
    interrupt: Callable[[], bool] | None
    conditioning: Any = None  # ScheduledConditioning (batch 1), made by ready()
    word_rows: "WordRows | None" = None  # the motion module's, used while the prompts are encoded

    def ready(self, pipe) -> None:
        """Set the pipeline up for this job: LoRAs first, since they change the text encoder that then encodes the
        prompt schedule, and the scheduler. The motion module's word rows replace the encoder's own only for that
        encoding: the still pipelines share the encoder."""
        apply_loras(pipe, self.loras, self.model.lora_targets)
        pipe.scheduler = self.scheduler
        handle = self.word_rows.attach(self.model.pipeline.text_encoder) if self.word_rows is not None else None
        try:
            self.conditioning = _conditioning(self.model, self.request.clip_skip, self.text, self.negative,
                                              self.request.steps * self.scheduler.order)
        finally:
            if handle is not None:
                handle.remove()


def generate_video(engine: "Engine", request: VideoRequest, progress: Callable[[Progress], None] | None = None,
                   interrupt: Callable[[], bool] | None = None, save: bool = False,
                   output: str | Path | None = None) -> VideoResult:
    """One video for `request` (see Engine.generate_video, which holds the engine lock around this)."""
    sampler, schedule = samplers.parse_sampler(request.sampler, request.schedule_type)
    schedule = samplers.resolved_schedule(sampler, schedule)
    init_image = load_image(request.init_image) if request.init_image else None
    control_units = check_units(request.controlnets, init_image)  # units without an image use init_image
    target = _target_path(output, request.format, engine.settings.outputs_dir) if save else None
    prompt, negative, text, loras = engine._prompts(request)

    model = engine.models.load(request.model, request.checkpoint_config)
    kind = video_kind(model)
    width, height = _output_size(request, model, init_image)
    if init_image is not None:
        init_image = init_image.resize((width, height), Image.LANCZOS)
    seed = request.seed if request.seed != -1 else secrets.randbelow(MAX_SEED)
    fmt = target[2] if target else request.format
    used = request.model_copy(update={"seed": seed, "width": width, "height": height, "sampler": sampler.name,
                                      "schedule_type": schedule.label, "format": fmt})
    # DPM++ SDE seeds its Brownian noise per batch entry: one video for AnimateDiff, one per frame for the others.
    sde_seeds = [seed] if kind == ANIMATEDIFF else [(seed + i) % (MAX_SEED + 1) for i in range(used.frames)]
    scheduler = build_scheduler(sampler.name, schedule.label, model.scheduler_config,
                                         sde_seeds if sampler.scheduler == "DPMSolverSDEScheduler" else None)
    job = _Job(model, used, text, negative, scheduler, init_image, loras, control_units, progress, interrupt)
    runner = {ANIMATEDIFF: _run_animatediff, MODELSCOPE: _run_modelscope, I2VGEN_XL: _run_i2vgen_xl}[kind]
    frames, interrupted, extra = runner(engine, job)

    params = _infotext_params(used, model, kind, loras, extra)
    from huabu.core.pnginfo import create_infotext

    infotext = create_infotext(prompt, negative, params, huabu.__version__)
    result = VideoResult(frames, seed, infotext, used, model.info(), kind, params, interrupted=interrupted)
    if init_image is not None and frames:
        from huabu.engine.metrics import first_frame_fidelity

        result.first_frame = first_frame_fidelity(init_image, frames[0])
    if save and frames:
        _save(engine, result, target[0], target[1], prompt, negative)
    return result


def _target_path(output: str | Path | None, fmt: str, default_folder: Path) -> tuple[Path | None, Path, str]:
    """(the file, or None for a numbered name; its folder; the format). `output` with a video extension is the file,
    otherwise a folder (default: the outputs folder)."""
    from huabu.engine.video_export import VIDEO_FORMATS, video_format

    if output is None:
        return None, default_folder, fmt
    output = Path(output)
    if output.suffix.lower().lstrip(".") in VIDEO_FORMATS:
        return output, output.parent, video_format(output)
    if output.suffix and not output.is_dir():
        video_format(output)  # raises: a file name with an extension that is no video format
    return None, output, fmt


def _conditioning(model: LoadedModel, clip_skip: int, text: str, negative: str, steps: int):
    """The prompt schedule for one video (batch 1), with the engine's cached PromptEncoder for this clip skip."""
    from huabu.engine.prompts.encode import PromptEncoder, ScheduledConditioning

    encoder = model.encoders.get(clip_skip)
    if encoder is None:
        pipe = model.pipeline
        encoder = PromptEncoder([pipe.tokenizer], [pipe.text_encoder], clip_skip=clip_skip)
        model.encoders[clip_skip] = encoder
    return ScheduledConditioning.build(encoder, text, negative, steps, 1)


def _is_scheduled(conditioning) -> bool:
    return len(conditioning.positive) > 1 or len(conditioning.negative) > 1


def _run_animatediff(engine: "Engine", job: _Job) -> tuple[list[Image.Image], bool, dict[str, Any]]:
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    request, model = job.request, job.model
    motion = resolve_motion_module(request.motion_module, engine.settings, model.ref)
    pipe = _motion_pipeline(engine, model, motion)
    limit = int(pipe.unet.config.motion_max_seq_length)
    if request.frames > limit:
        raise InvalidRequest(f"motion module {motion.name} makes at most {limit} frames; ask for {limit} or fewer")
    extra: dict[str, Any] = {"Motion module": motion.name,
                             "Motion module hash": motion_module_hash(motion, engine.models.hashes)}
    text_lora = motion_text_lora(motion, engine)
    if text_lora is not None:  # part of the module: applied with it, not listed among the prompt's LoRAs
        job.loras = [*job.loras, text_lora]
        extra["Motion text LoRA"] = text_lora.short_hash
    words = motion_words_file(motion)
    if words is not None:
        extra["Motion words"] = checkpoints.short_hash(engine.models.hashes.sha256(words))
        from huabu.engine.motion_words import load_word_rows

        job.word_rows = load_word_rows(words, model.pipeline.tokenizer, model.pipeline.text_encoder)
    call: dict[str, Any] = {"height": request.height, "width": request.width}
    if request.sparse_control and job.control_units:
        raise InvalidRequest("use SparseCtrl or ControlNet units for a video, not both")
    if request.sparse_control:
        name, location, controlnet = load_sparse_control(request.sparse_control, engine.settings)
        pipe = _derived_pipeline(model, f"sparsectrl|{motion.location}|{location}", pipe, "sparsectrl",
                                 controlnet=controlnet)
        call.update(num_frames=request.frames, conditioning_frames=[job.init_image], controlnet_frame_indices=[0],
                    controlnet_conditioning_scale=request.sparse_control_scale)
        extra.update({"SparseCtrl": name, "SparseCtrl weight": format_number(request.sparse_control_scale)})
    elif job.init_image is not None:
        call.update(video=[job.init_image] * request.frames, strength=request.denoising_strength)
        pipe = _derived_pipeline(model, f"img2vid|{motion.location}", pipe, "img2vid")
    else:
        call.update(num_frames=request.frames)
    if job.control_units:
        pipe = _with_controlnets(engine, job, pipe, call, extra)
    job.ready(pipe)

    generator = torch.Generator("cpu").manual_seed(request.seed)
    anchor = None
    if job.init_image is not None and request.anchor_first_frame:
        image_latents = encode_image(model, job.init_image)
        noise = randn_tensor(image_latents.shape, generator=generator, device=image_latents.device,
                             dtype=image_latents.dtype)
        anchor = (image_latents, noise)
        extra["First frame"] = "anchored"
    callback = _animatediff_callback(job, request.frames, anchor)
    latents = pipe(num_inference_steps=request.steps, guidance_scale=request.cfg_scale, generator=generator,
                   output_type="latent", callback_on_step_end=callback,
                   callback_on_step_end_tensor_inputs=["latents", *job.conditioning.callback_tensor_inputs],
                   **job.conditioning.initial_kwargs(), **call).frames
    return decode_video(model, latents), bool(getattr(pipe, "interrupt", False)), extra


def _motion_pipeline(engine: "Engine", model: LoadedModel, motion: MotionModuleRef):
    """The cached AnimateDiffPipeline for this model and motion module; another module, or this one changed on
    disk, replaces it (each holds a full copy of the UNet)."""
    from diffusers import AnimateDiffPipeline

    key = f"animatediff|{motion.location}|{_disk_stamp(motion)}"
    pipe = model.pipelines.get(key)
    if pipe is not None:
        return pipe
    adapter = load_motion_adapter(motion, engine.settings)
    _check_adapter_fits(adapter, model, motion)
    for old in [k for k in model.pipelines if k.split("|")[0] in ("animatediff", "img2vid", "sparsectrl")]:
        del model.pipelines[old]
    base = model.pipeline
    pipe = AnimateDiffPipeline.from_pipe(base, unet=_without_lora_layers(base.unet), motion_adapter=adapter,
                                         dtype=base.dtype)
    pipe.to(base.device)  # the new motion UNet is built on the CPU
    words = motion_words_file(motion)
    if words is not None:  # hooked into this pipeline's own UNet, so every pipeline derived from it has them
        from huabu.engine.motion_words import attach_motion_words, load_motion_words

        attach_motion_words(pipe.unet, load_motion_words(words, pipe.unet))
    pipe.set_progress_bar_config(disable=True)
    model.pipelines[key] = pipe
    return pipe


def motion_words_file(ref: MotionModuleRef) -> Path | None:
    """The motion-word layers trained with a motion module (huabu.engine.motion_words), beside it in its folder."""
    from huabu.engine.motion_words import MOTION_WORDS_FILE

    return _beside_module(ref, MOTION_WORDS_FILE)


def _disk_stamp(motion: MotionModuleRef) -> str:
    """Size and modification time of a local module's files: a file written again gets a new stamp."""
    if motion.kind == "hub":
        return ""
    path = Path(motion.location)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return ";".join(f"{p.name}:{st.st_size}:{st.st_mtime_ns}" for p in files for st in (p.stat(),))


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


def _derived_pipeline(model: LoadedModel, key: str, motion_pipe, label: str, **components):
    """A cached AnimateDiff variant (video-to-video, SparseCtrl) sharing the motion pipeline's modules."""
    from diffusers import AnimateDiffSparseControlNetPipeline, AnimateDiffVideoToVideoPipeline

    pipe = model.pipelines.get(key)
    if pipe is None:
        cls = AnimateDiffSparseControlNetPipeline if label == "sparsectrl" else AnimateDiffVideoToVideoPipeline
        pipe = cls.from_pipe(motion_pipe, dtype=motion_pipe.dtype, **components)
        pipe.to(motion_pipe.device)
        pipe.set_progress_bar_config(disable=True)
        model.pipelines[key] = pipe
    return pipe


def _with_controlnets(engine: "Engine", job: _Job, pipe, call: dict[str, Any], extra: dict[str, Any]):
    """The ControlNet variant of the AnimateDiff pipeline (text- or video-to-video) around the same modules, with
    each unit's control map given to every frame; fills in the call's ControlNet arguments and infotext fields."""
    from diffusers import (AnimateDiffControlNetPipeline, AnimateDiffVideoToVideoControlNetPipeline,
                           MultiControlNetModel)

    from huabu.core.control_units import BALANCED, CONTROL_FIRST
    from huabu.engine.control_modes import ModeControlNet

    request, model = job.request, job.model
    plan = engine.controlnets.plan(job.control_units, model)
    extra.update(plan.infotext_params())
    if not plan.active:
        return pipe
    # Per unit control modes, as ControlPlan.pipeline does for stills.
    nets = [net if checked.unit.control_mode == BALANCED else
            ModeControlNet(net, soft=True,
                           prompt_half_only=request.cfg_scale > 1.0 and checked.unit.control_mode == CONTROL_FIRST)
            for checked, net in plan.active]
    cls = AnimateDiffVideoToVideoControlNetPipeline if "video" in call else AnimateDiffControlNetPipeline
    pipe = cls.from_pipe(pipe, controlnet=MultiControlNetModel(nets), dtype=pipe.dtype)
    pipe.set_progress_bar_config(disable=True)
    maps = [plan.control_map(checked, request.width, request.height, pipe.device) for checked, _ in plan.active]
    call.update(conditioning_frames=[[m] * request.frames for m in maps],
                controlnet_conditioning_scale=[float(c.unit.weight) for c, _ in plan.active],
                control_guidance_start=[float(c.unit.guidance_start) for c, _ in plan.active],
                control_guidance_end=[float(c.unit.guidance_end) for c, _ in plan.active])
    return pipe


def _animatediff_callback(job: _Job, frames: int, anchor: tuple | None):
    """diffusers `callback_on_step_end`: prompt schedule, first-frame anchor, progress and interrupt."""
    # AnimateDiff holds the embeddings repeated per frame: [negative x frames, positive x frames]. The schedule's
    # batch-of-`frames` variant builds exactly that layout.
    per_frame = dataclasses.replace(job.conditioning, batch_size=frames) if _is_scheduled(job.conditioning) else None

    def on_step_end(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        if per_frame is not None:
            callback_kwargs = per_frame.step_callback(pipe, step, timestep, callback_kwargs)
        if anchor is not None:
            callback_kwargs["latents"] = _anchor_first_frame(pipe, step, callback_kwargs["latents"], *anchor)
        if job.progress is not None:  # frame 0's latents: what still-image previews decode
            job.progress(Progress(0, 1, step + 1, pipe.num_timesteps, 0, 1, 1, callback_kwargs["latents"][:, :, 0]))
        if job.interrupt is not None and job.interrupt():
            pipe._interrupt = True  # diffusers' documented way to stop a pipeline from its callback
        return callback_kwargs

    return on_step_end


def _anchor_first_frame(pipe, step: int, latents, image_latents, noise):
    """Frame 0 := the image's latents noised to the level of the next step (clean after the last one)."""
    timesteps = pipe.scheduler.timesteps
    # The loop runs a tail of the scheduler's timesteps (image-to-video skips the noisiest ones).
    following = len(timesteps) - pipe.num_timesteps + step + 1
    if following < len(timesteps):
        target = pipe.scheduler.add_noise(image_latents, noise, timesteps[following:following + 1])
    else:
        target = image_latents
    latents = latents.clone()
    latents[:, :, 0] = target.to(latents.dtype)
    return latents


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
def _unet_steps(pipe, total: int, job: _Job) -> Iterator[None]:
    """Progress and interrupt for pipelines without `callback_on_step_end` (ModelScope, I2VGen-XL): a forward hook
    (torch's public API) counts UNet calls, one per sampling step since guidance runs as one batch."""
    calls = 0

    def after_unet(module, args, output) -> None:
        nonlocal calls
        calls += 1
        if job.progress is not None:
            job.progress(Progress(0, 1, min(calls, total), total, 0, 1, 1))
        if job.interrupt is not None and job.interrupt():
            raise _Interrupted

    handle = pipe.unet.register_forward_hook(after_unet)
    try:
        yield
    finally:
        handle.remove()


def _planned_steps(scheduler, steps: int, strength: float | None) -> int:
    run = steps if strength is None else min(int(steps * strength), steps)
    return max(1, run * scheduler.order)


def _plain_video_call(pipe, job: _Job, denoise: float | None, **call) -> tuple[list[Image.Image], bool]:
    """Run a ModelScope / I2VGen-XL pipeline with the hook-based progress; an interrupt returns no frames."""
    import torch

    request = job.request
    job.ready(pipe)
    if _is_scheduled(job.conditioning):
        raise InvalidRequest(f"prompt editing and alternation ([from:to:when], [a|b]) need an AnimateDiff model; "
                             f"{job.model.name}'s pipeline cannot change the prompt during sampling")
    generator = torch.Generator("cpu").manual_seed(request.seed)
    total = _planned_steps(job.scheduler, request.steps, denoise)
    try:
        with _unet_steps(pipe, total, job):
            frames = pipe(num_inference_steps=request.steps, guidance_scale=request.cfg_scale, generator=generator,
                          output_type="pil",
                          **job.conditioning.initial_kwargs(), **call).frames[0]
    except _Interrupted:
        return [], True
    return list(frames), False


def _refuse_animatediff_options(job: _Job, kind: str) -> None:
    if job.control_units:
        raise InvalidRequest(f"ControlNet units work with AnimateDiff motion modules, not with {kind} models")
    if job.request.motion_module:
        raise InvalidRequest(f"{job.model.name} is a {kind} video model; it takes no motion module")
    if job.request.sparse_control:
        raise InvalidRequest(f"SparseCtrl works with AnimateDiff motion modules, not with {kind} models")


def _run_modelscope(engine: "Engine", job: _Job) -> tuple[list[Image.Image], bool, dict[str, Any]]:
    _refuse_animatediff_options(job, MODELSCOPE)
    request, model = job.request, job.model
    pipe, strength = model.pipeline, None
    call = {"num_frames": request.frames, "height": request.height, "width": request.width}
    if job.init_image is not None:
        pipe = model.pipelines.get("modelscope-img2vid")
        if pipe is None:
            from diffusers import VideoToVideoSDPipeline

            pipe = VideoToVideoSDPipeline.from_pipe(model.pipeline, dtype=model.pipeline.dtype)
            pipe.set_progress_bar_config(disable=True)
            model.pipelines["modelscope-img2vid"] = pipe
        strength = request.denoising_strength
        call = {"video": [job.init_image] * request.frames, "strength": strength}  # sized by the image
    frames, interrupted = _plain_video_call(pipe, job, strength, **call)
    return frames, interrupted, {"Video model": MODELSCOPE}


def _run_i2vgen_xl(engine: "Engine", job: _Job) -> tuple[list[Image.Image], bool, dict[str, Any]]:
    _refuse_animatediff_options(job, I2VGEN_XL)
    if job.init_image is None:
        raise InvalidRequest(f"{job.model.name} is an I2VGen-XL model, which animates an image: pass --image")
    request = job.request
    frames, interrupted = _plain_video_call(job.model.pipeline, job, None, image=job.init_image,
                                            num_frames=request.frames, target_fps=request.fps,
                                            height=request.height, width=request.width,
                                            decode_chunk_size=_DECODE_CHUNK)
    return frames, interrupted, {"Video model": I2VGEN_XL}


# --- output ---------------------------------------------------------------------------------------------------

def _infotext_params(request: VideoRequest, model: LoadedModel, kind: str, loras: list[ResolvedLora],
                     extra: dict[str, Any]) -> dict[str, Any]:
    """The `key: value` fields, in A1111 1.10's order, then the video fields."""
    uses_strength = request.init_image is not None and not request.sparse_control and kind != I2VGEN_XL
    return {
        "Steps": request.steps,
        "Sampler": request.sampler,
        "Schedule type": request.schedule_type,
        "CFG scale": format_number(request.cfg_scale),
        "Seed": request.seed,
        "Size": f"{request.width}x{request.height}",
        "Model hash": model.short_hash,
        "Model": model.name,
        "Denoising strength": format_number(request.denoising_strength) if uses_strength else None,
        "Clip skip": request.clip_skip if request.clip_skip > 1 else None,
        "Lora hashes": lora_hashes_text(loras),
        "Frames": request.frames,
        "FPS": request.fps,
        **extra,
    }


def _save(engine: "Engine", result: VideoResult, path: Path | None, folder: Path, prompt: str, negative: str) -> None:
    from huabu.core.pnginfo import next_output_path
    from huabu.engine.video_export import write_video

    request = result.request_used
    reserved = None
    if path is None:
        reserved = next_output_path(folder, result.seed, request.format)
        path = reserved
    try:
        write_video(result.frames, path, request.fps, result.infotext)
    except BaseException:
        if reserved is not None:
            reserved.unlink(missing_ok=True)  # the empty placeholder next_output_path created
        raise
    result.path = path
    result.gallery_id = engine.gallery.add(path, "video", prompt, negative, result.params)
