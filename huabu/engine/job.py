"""What stills and video share: one prepare step, one prompt encoding, one step callback, one save.

`prepare` turns a GenerateRequest or VideoRequest into a `Job` (sampler, seed, size, prompts, LoRAs, input images,
ControlNet units, the loaded model and the request as used); `Engine.generate` and `Engine.generate_video` then
pick a pipeline, run it with `step_callback`, build the infotext and `save_output`. Whatever joins a run beyond
that (ControlNet, IP-Adapter image prompts, the prompt schedule, motion words, SparseCtrl, first-frame anchoring)
is an `Extension` (huabu.engine.extensions).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from huabu.core import pnginfo
from huabu.core.atomic import publish_new, staged_path
from huabu.core.errors import InvalidRequest
from huabu.core.requests import MAX_SEED, GenerateRequest, VideoRequest
from huabu.core.samplers import Sampler, is_flow_config, parse_sampler, resolved_schedule, scheduler_config
from huabu.engine.controlnets import CheckedUnit, check_units, encoded_words, with_words
from huabu.engine.embeddings import UsedEmbedding, find_embeddings, named_in, use_embeddings
from huabu.engine.extensions import Extension
from huabu.engine.images import load_image, load_mask
from huabu.engine.inpaint_area import FILL, MaskedArea, fill_masked, outpaint_canvas
from huabu.engine.ip_adapters import CheckedIPAdapter, check_ip_adapters
from huabu.engine.loras import ResolvedLora, prompt_with_loras, resolve_loras
from huabu.engine.models import LoadedModel
from huabu.engine.prompts.syntax import extract_loras, validate_prompt
from huabu.engine.samplers import build_scheduler

if TYPE_CHECKING:
    from huabu.core.gallery import Gallery
    from huabu.engine.models import ModelManager
    from huabu.engine.prompts.book import PromptBook
    from huabu.engine.prompts.encode import ScheduledConditioning
    from huabu.engine.prompts.plain import PipelinePrompts

Request = GenerateRequest | VideoRequest


@dataclass(frozen=True)
class Progress:
    """One sampling step done: `step` of `steps` in pipeline call `iteration` (0-based) of `n_iter`, which makes
    images `first_image` .. `first_image + batch_size - 1` of `total_images` (a video is one image)."""

    iteration: int
    n_iter: int
    step: int
    steps: int
    first_image: int
    batch_size: int
    total_images: int
    latents: Any = field(default=None, repr=False, compare=False)  # this step's latents, for live previews


@dataclass
class Job:
    """One request, resolved: what every run, still or video, needs before its pipeline is chosen."""

    request: Request  # as used: seed, size, sampler and schedule filled in
    model: LoadedModel
    sampler: Sampler
    prompt: str  # styled, naming every LoRA as its tag: the infotext's prompt line
    negative: str
    text: str  # the prompt without its LoRA tags: what is encoded
    loras: list[ResolvedLora]
    init_image: Image.Image | None
    mask: Image.Image | None
    control_units: list[CheckedUnit]
    area: MaskedArea | None = None  # "only masked": where init_image and mask were cropped from
    embeddings: list[UsedEmbedding] = field(default_factory=list)  # textual inversions the prompts name
    encoded_negative: str | None = None  # the negative prompt as encoded (embedding names as their tokens)
    ip_adapters: list[CheckedIPAdapter] = field(default_factory=list)  # image prompts with their images read
    hires_loras: list[ResolvedLora] | None = None  # the hires pass's, when a hires prompt names its own

    @property
    def negative_text(self) -> str:
        """The negative prompt to encode."""
        return self.negative if self.encoded_negative is None else self.encoded_negative

    def scheduler(self, seeds: list[int] | None = None) -> Any:
        """A fresh scheduler for the job's sampler; `seeds` seed DPM++ SDE's Brownian noise (one per batch entry)."""
        request = self.request
        sde = self.sampler.scheduler == "DPMSolverSDEScheduler"
        return build_scheduler(request.sampler, request.schedule_type, self.model.scheduler_config,
                               seeds if sde else None, getattr(request, "shift", None))  # videos: UNets, no shift


@dataclass(frozen=True)
class Prompter:
    """Styles and LoRA tags: how a request's prompts become what is encoded."""

    loras_dir: Path
    hashes: Any  # checkpoints.HashCache
    allow_unsafe_pickle: bool
    book: Callable[[str | None], PromptBook]  # by the request's model
    embeddings_dir: Path | None = None  # textual inversion embeddings named in prompts (None: none used)

    def prompts(self, request: Request) -> tuple[str, str, str, list[ResolvedLora]]:
        """(styled prompt naming every LoRA as its tag, negative prompt, prompt without the tags, the LoRAs)."""
        prompt, negative = request.prompt, request.negative_prompt
        if request.styles:
            from huabu.engine.prompts.book import apply_styles

            prompt, negative = apply_styles(prompt, negative, request.styles, self.book(request.model))
        prompt, untaggable = prompt_with_loras(prompt, request.loras)
        text, tag_loras = extract_loras(prompt)
        hires = getattr(request, "hr_prompt", ""), getattr(request, "hr_negative_prompt", "")
        for written in (prompt, negative, *hires):  # before any model loads (hires texts are encoded late); this
            validate_prompt(written)                # also refuses <hypernet:...> tags (extract_loras)
        loras = resolve_loras([*untaggable, *tag_loras], self.loras_dir, self.hashes, self.allow_unsafe_pickle)
        return prompt, negative, text, loras

    def hires_loras(self, request: Request) -> list[ResolvedLora] | None:
        """The LoRAs of the hires fix's second pass when the request has a hires prompt: its tags, plus the LoRAs
        given outside the prompt, as A1111 activates the hires prompt's own networks for that pass (a hires prompt
        without tags runs without the prompt's tagged LoRAs). None: the second pass keeps the first's."""
        hires_prompt = getattr(request, "hr_prompt", "")
        if not (getattr(request, "enable_hr", False) and hires_prompt):
            return None
        prompt, untaggable = prompt_with_loras(hires_prompt, request.loras)
        return resolve_loras([*untaggable, *extract_loras(prompt)[1]], self.loras_dir, self.hashes,
                             self.allow_unsafe_pickle)


def prepare(request: Request, models: ModelManager, prompter: Prompter) -> Job:
    """Check and resolve a request: inputs first (cheap errors before a model loads), then the model, the output
    size and the seed."""
    sampler, schedule = parse_sampler(request.sampler, request.schedule_type)
    init_image = load_image(request.init_image) if request.init_image else None
    mask_spec = getattr(request, "mask", None)
    mask = load_mask(mask_spec) if mask_spec else None
    if init_image is not None and getattr(request, "outpaint", None):
        init_image, mask = outpaint_canvas(init_image, request.outpaint)
    control_units = check_units(request.controlnets, init_image)  # units without an image use init_image
    ip_adapters = check_ip_adapters(getattr(request, "ip_adapters", []), init_image)
    if mask is not None and mask.size != init_image.size:
        raise InvalidRequest(f"the mask is {mask.width}x{mask.height} but the image is "
                             f"{init_image.width}x{init_image.height}; they must be the same size")
    prompt, negative, text, loras = prompter.prompts(request)
    hires_loras = prompter.hires_loras(request)

    model = models.load(request.model, request.checkpoint_config)
    schedule = resolved_schedule(sampler, schedule, is_flow_config(model.scheduler_config))
    model.denoiser.check_request(request, control=bool(control_units),
                                 loras=bool(loras or hires_loras),
                                 sampler_class=scheduler_config(sampler.name, schedule.label,
                                                                model.scheduler_config)[0])
    only_masked = mask is not None and request.inpaint_full_res
    width, height = output_size(request, model, None if only_masked else init_image)
    control_units, text_boxes = with_words(control_units, request, width, height)
    text = encoded_words(text, control_units)
    area = None
    if only_masked:
        area, init_image, mask = MaskedArea.crop(init_image, mask, request.inpaint_full_res_padding, (width, height))
    elif init_image is not None:  # "just resize", as A1111's default resize mode
        init_image = init_image.resize((width, height), Image.LANCZOS)
        mask = mask.resize((width, height), Image.LANCZOS) if mask is not None else None
    if mask is not None and request.inpainting_fill == FILL:
        init_image = fill_masked(init_image, mask)
    seed = request.seed if request.seed != -1 else secrets.randbelow(MAX_SEED)
    update = {"seed": seed, "width": width, "height": height, "sampler": sampler.name, "schedule_type": schedule.label}
    if text_boxes and "text_boxes" in type(request).model_fields:  # the words as placed, so the infotext records
        # the boxes an automatic layout chose (a video request has no such field: its glyph units still draw)
        update["text_boxes"] = text_boxes
    if getattr(request, "subseed_strength", 0) > 0 and request.subseed == -1:
        update["subseed"] = secrets.randbelow(MAX_SEED)
    used = request.model_copy(update=update)
    embeddings, encoded_negative = [], None
    if prompter.embeddings_dir is not None and model.denoiser.is_transformer:
        named = named_in([text, negative], find_embeddings(prompter.embeddings_dir))
        if named:
            raise InvalidRequest(f"textual inversion embedding {named[0]!r} loads into the CLIP text encoders of UNet "
                                 f"models only; this is a {model.denoiser.label} (transformer) model")
    elif prompter.embeddings_dir is not None:
        (text, encoded_negative), embeddings = use_embeddings(model.pipeline, [text, negative],
                                                              prompter.embeddings_dir, models.hashes,
                                                              prompter.allow_unsafe_pickle)
    return Job(used, model, sampler, prompt, negative, text, loras, init_image, mask, control_units, area,
               embeddings, encoded_negative, ip_adapters, hires_loras)


def output_size(request: Request, model: LoadedModel, init_image: Image.Image | None) -> tuple[int, int]:
    """Width and height: as requested, else the input image's (rounded down to the VAE factor), else the model's
    default; each must be a multiple of the VAE factor (one latent pixel per factor x factor image pixels), times
    a transformer's patch size (whole latent patches)."""
    factor = model.size_multiple
    why = "this model's VAE factor" if factor == model.vae_scale_factor else "this model's VAE factor x patch size"
    if init_image is not None:
        default_w = max(factor, init_image.width // factor * factor)
        default_h = max(factor, init_image.height // factor * factor)
    else:
        default_w = default_h = model.default_size
    width, height = request.width or default_w, request.height or default_h
    for label, value in (("width", width), ("height", height)):
        if value % factor:
            lower, upper = value // factor * factor, (value // factor + 1) * factor
            raise InvalidRequest(f"{label} {value} is not a multiple of {factor} ({why}); "
                                 f"use {lower or upper} or {upper}")
    return width, height


def encode_prompts(model: LoadedModel, clip_skip: int, text: str, negative: str, steps: int,
                   batch_size: int) -> ScheduledConditioning | PipelinePrompts:
    """The prompt schedule, with the model's cached PromptEncoder for this clip skip (both SDXL encoders); a
    transformer model's pipeline encodes its own prompts (huabu.engine.prompts.plain)."""
    from huabu.engine.prompts.encode import PromptEncoder, ScheduledConditioning

    if model.denoiser.is_transformer:
        from huabu.engine.prompts.plain import PipelinePrompts

        return PipelinePrompts.build(model, text, negative, steps, batch_size, clip_skip)
    encoder = model.encoders.get(clip_skip)
    if encoder is None:
        pipe = model.pipeline
        pairs = [(pipe.tokenizer, pipe.text_encoder)]
        if getattr(pipe, "text_encoder_2", None) is not None:
            pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
        encoder = PromptEncoder([t for t, _ in pairs], [e for _, e in pairs], clip_skip=clip_skip)
        model.encoders[clip_skip] = encoder
    return ScheduledConditioning.build(encoder, text, negative, steps, batch_size)


def step_callback(extensions: Iterable[Extension], report: Callable[[Any, int, dict], Progress] | None,
                  progress: Callable[[Progress], None] | None, interrupt: Callable[[], bool] | None):
    """diffusers `callback_on_step_end` running the extensions that act per step, then progress and interrupt;
    None when there is nothing to do per step, so a plain generation pays nothing. `report(pipe, step,
    callback_kwargs)` makes the Progress of a step."""
    acting = [extension for extension in extensions if extension.acts_per_step]
    if not (acting or progress or interrupt):
        return None

    def on_step_end(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        for extension in acting:
            callback_kwargs = extension.on_step_end(pipe, step, timestep, callback_kwargs)
        if progress is not None:
            progress(report(pipe, step, callback_kwargs))
        if interrupt is not None and interrupt():
            pipe._interrupt = True  # diffusers' documented way to stop a pipeline from its callback
        return callback_kwargs

    return on_step_end


def callback_tensors(extensions: Iterable[Extension]) -> list[str]:
    """`callback_on_step_end_tensor_inputs`: the latents and what the extensions read."""
    names = ["latents"]
    for extension in extensions:
        names += [name for name in extension.tensor_inputs if name not in names]
    return names


def save_output(write: Callable[[Path], Path], folder: Path, seed: int, ext: str, gallery: Gallery, kind: str,
                prompt: str, negative: str, params: dict[str, Any], path: Path | None = None) -> tuple[Path, int]:
    """Write one output and index it: `write(path)` writes the file atomically; without `path` it writes a
    temporary file in `folder` that then takes the next free A1111-style numbered name (never an empty placeholder,
    which a killed process would leave behind)."""
    if path is not None:
        path = write(path)
    else:
        ext = ext.lstrip(".")
        with staged_path(folder, f".tmp.{ext}") as staged:  # writers go by the extension
            write(staged)
            path = publish_new(staged, pnginfo.output_names(folder, seed, ext))
    return path, gallery.add(path, kind, prompt, negative, params)
