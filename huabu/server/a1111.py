"""AUTOMATIC1111-compatible `/sdapi/v1/*` routes.

The request models accept A1111 1.10's whole txt2img/img2img schema (StableDiffusionProcessingTxt2Img/Img2Img plus
the API's own fields) and any extra key, because real clients send them all. `to_generate` maps a request onto a
GenerateRequest; what huabu cannot honour is ignored and named in `info["warnings"]`, never refused. Each call is a
job on the shared queue that the route awaits, so `/progress` and `/interrupt` see it like any other job.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Request, Response
from fastapi.concurrency import run_in_threadpool
from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field, model_validator

import huabu
from huabu.core.errors import BadImage, HuabuError, InvalidRequest
from huabu.core.fields import api_fields, api_settings, fields_from_api, info_keys, infotext_values
from huabu.core.ip_adapters import is_ip_adapter_module
from huabu.core.pnginfo import parse_infotext, read_parameters
from huabu.core.requests import GenerateRequest
from huabu.core.samplers import UNAVAILABLE, parse_sampler
from huabu.core.text_boxes import GLYPH
from huabu.core.upscalers import BUILTIN_UPSCALERS, LATENT_UPSCALE_MODES
from huabu.engine.grids import batch_grid
from huabu.engine.scripts.common import save_grid
from huabu.engine.upscalers import Upscalers
from huabu.engine.vaes import AUTOMATIC as AUTOMATIC_VAE
from huabu.engine.vaes import list_vaes
from huabu.server.a1111_extras import ExtrasBatchRequest, ExtrasSingleRequest, batch_images, extras_images
from huabu.server.a1111_options import current_options, encode_image, image_format, option, store_options
from huabu.server.catalog import cmd_flags, memory, memory_options
from huabu.server.jobs import Job
from huabu.server.runner import Outcome, job_folder
from huabu.server.security import CheckedRoute, image_data_url
from huabu.server.storage import StorageFull, is_disk_full

log = logging.getLogger(__name__)

router = APIRouter(prefix="/sdapi/v1", tags=["A1111-compatible"], route_class=CheckedRoute)

MAX_UNKNOWN_FIELDS = 64  # keys huabu does not know in one request: named in warnings, their values dropped

DISCONNECT_POLL = 0.5  # seconds between looks at whether a waiting call's client is still there

# A1111 values that mean "not used": a field holding one of these is not worth a warning.
_NO_OPS: dict[str, tuple] = {
    "restore_faces": (False, None), "tiling": (False, None), "eta": (None,), "s_min_uncond": (None, 0),
    "s_churn": (None, 0), "s_tmax": (None, 0), "s_tmin": (None, 0), "s_noise": (None, 1),
    "refiner_checkpoint": (None, "", "None"), "refiner_switch_at": (None,), "disable_extra_networks": (False, None),
    "firstpass_image": (None, ""),
    "firstphase_width": (0, None), "firstphase_height": (0, None), "image_cfg_scale": (None,),
    "initial_noise_multiplier": (None, 1), "latent_mask": (None, ""), "resize_mode": (0, None),
}
# Fields with no effect on the images (bookkeeping and UI hints): accepted silently.
_SILENT = {"do_not_save_samples", "do_not_save_grid", "override_settings_restore_afterwards",
           "comments", "force_task_id", "script_args", "sampler_index", "hr_checkpoint_name", "hr_scheduler",
           "hr_cfg", "hr_distilled_cfg", "mask_round", "include_init_images",
           "mask_blur_x", "mask_blur_y"}
# The hires fix's own options huabu does not have, with the values that mean "as the first pass".
_HIRES_SAME = {"hr_checkpoint_name": (None, "", "Use same checkpoint"),
               "hr_scheduler": (None, "", "Use same scheduler"), "hr_cfg": (None,), "hr_distilled_cfg": (None,)}


class _A1111Base(BaseModel):
    """Fields of A1111 1.10's StableDiffusionProcessing and the API's additions (defaults as A1111's)."""

    model_config = ConfigDict(extra="allow")

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = Field(default_factory=list)
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float = 0.75
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] = Field(default_factory=dict)
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    sampler_index: str | int | None = "Euler"
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    force_task_id: str | None = None
    infotext: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _nulls_mean_default(cls, data: Any) -> Any:
        # A1111's API model makes every field Optional, and clients send null for "not set": use the default.
        # Unknown keys are kept by name only (for the warnings): their values are never used, kept or echoed.
        if not isinstance(data, dict):
            return data
        unknown = [k for k in data if k not in cls.model_fields]
        if len(unknown) > MAX_UNKNOWN_FIELDS:
            raise InvalidRequest(f"request has {len(unknown)} fields huabu does not know; the limit is "
                                 f"{MAX_UNKNOWN_FIELDS}")
        return {k: (v if k in cls.model_fields else None) for k, v in data.items()
                if v is not None or k not in cls.model_fields}


class Txt2ImgRequest(_A1111Base):
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""


class Img2ImgRequest(_A1111Base):
    init_images: list[str] | None = None
    resize_mode: int = 0
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False


class GenerationResponse(BaseModel):
    images: list[str] | None = Field(default=None, description="base64 PNGs (no data: prefix)")
    parameters: dict[str, Any]
    info: str = Field(description="JSON string: seeds, infotexts, model, warnings, ...")


class PNGInfoRequest(BaseModel):
    image: str


class ProgressRequest(BaseModel):
    skip_current_image: bool = False


# --- mapping A1111 -> GenerateRequest ------------------------------------------------------------------------

def to_generate(req: _A1111Base, catalog, mode: str) -> tuple[GenerateRequest, list[str]]:
    """The GenerateRequest an A1111 request asks for, and warnings for what was ignored."""
    warnings: list[str] = []
    req = _apply_infotext(req, warnings)
    fields = req.model_fields_set | set(req.model_extra or {})
    for name, no_ops in _NO_OPS.items():
        if name in fields and getattr(req, name, None) not in no_ops:
            warnings.append(f"{name}: ignored (huabu does not support it yet)")
    for name in sorted(req.model_extra or {}):
        if name not in _SILENT:
            warnings.append(f"{name[:64]}: ignored (not an A1111 field huabu knows)")

    sampler, schedule = _sampler(req, warnings)
    limits = catalog.limits
    data: dict[str, Any] = fields_from_api(req.model_dump())  # steps, cfg_scale, seed, size ... by the table's names
    if mode == "txt2img":
        _hires_fields(req, data, warnings)
    data.update(mode=mode, prompt=req.prompt, negative_prompt=req.negative_prompt, sampler=sampler,
                schedule_type=schedule, batch_size=req.batch_size, n_iter=req.n_iter,
                styles=_styles(req.styles, catalog, warnings), model=catalog.default_model,
                clip_skip=catalog.default_clip_skip, eta_noise_seed_delta=option(catalog, "eta_noise_seed_delta"),
                vae=_vae_name(option(catalog, "sd_vae"), catalog))
    _override_settings(req.override_settings, catalog, data, warnings)
    outpaint = isinstance(req, Img2ImgRequest) and req.script_name in OUTPAINT_SCRIPTS
    if isinstance(req, Img2ImgRequest):
        _img2img_fields(req, limits, data, warnings)
        if outpaint:  # A1111's outpainting scripts become the request's outpainting fields
            _outpaint_script(req.script_name, req.script_args, data, warnings)
    units = controlnet_units(req.alwayson_scripts, limits, warnings)
    text_boxes = [unit.pop("text_boxes") for unit in units if "text_boxes" in unit]
    if text_boxes:
        data["text_boxes"] = text_boxes[0]
        if len(text_boxes) > 1:
            warnings.append("controlnet: text_boxes of the first glyph unit used (the words are the prompt's, one "
                            "box each)")
    data["controlnets"] = [unit for unit in units if not is_ip_adapter_module(unit.get("module"))]
    data["ip_adapters"] = [ip_adapter_unit(unit, index, warnings) for index, unit in enumerate(units)
                           if is_ip_adapter_module(unit.get("module"))]
    if req.script_name and not outpaint:  # A1111's other scripts run in the engine (huabu.engine.scripts)
        data["script"] = {"name": req.script_name, "args": req.script_args}
    request = GenerateRequest.from_data(data)
    catalog.check_http_request(request)
    return request, warnings


def _hires_fields(req: _A1111Base, data: dict[str, Any], warnings: list[str]) -> None:
    """The hires fix as A1111 reads it: no upscaler means its default latent mode, "Use same sampler" the first
    pass's; denoising_strength acts only with the fix."""
    if not data.get("enable_hr"):
        for name in ("denoising_strength", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x",
                     "hr_resize_y", "hr_sampler", "hr_prompt", "hr_negative_prompt"):
            data.pop(name, None)
        return
    if data.get("hr_upscaler") in (None, ""):
        data["hr_upscaler"] = "Latent"
    if data.get("hr_sampler") in ("", "Use same sampler"):
        data["hr_sampler"] = None
    for name, same in _HIRES_SAME.items():
        if getattr(req, name, None) not in same:
            warnings.append(f"{name}: ignored (the hires pass uses the first pass's)")


def _apply_infotext(req: _A1111Base, warnings: list[str]) -> _A1111Base:
    """A1111 1.8+: fields an `infotext` names fill in those the request leaves unset (read through the field
    table; a value it cannot read is named in the warnings)."""
    if not req.infotext:
        return req
    errors: list[str] = []
    values = infotext_values(parse_infotext(req.infotext), errors)
    warnings.extend(f"infotext: {line}" for line in errors)
    stated = {**{name: values[name] for name in ("prompt", "negative_prompt") if values[name]},
              **api_fields(values, "api")}
    updates = {name: value for name, value in stated.items()
               if name in type(req).model_fields and name not in req.model_fields_set}
    settings = api_settings(values)
    if settings:
        updates["override_settings"] = {**settings, **req.override_settings}
    try:
        return type(req).model_validate({**req.model_dump(exclude_unset=True), **updates})
    except ValueError:
        warnings.append("infotext: ignored (its values do not fit the request fields)")
        return req


def _sampler(req: _A1111Base, warnings: list[str]) -> tuple[str, str]:
    name = req.sampler_name or (req.sampler_index if isinstance(req.sampler_index, str) else None) or "Euler"
    schedule = req.scheduler or "Automatic"
    try:
        parse_sampler(name)
    except InvalidRequest:
        if name.strip().lower() not in (u.lower() for u in UNAVAILABLE):
            raise
        warnings.append(f"sampler_name: {name!r} has no diffusers equivalent; used 'Euler'")
        name = "Euler"
    try:
        parse_sampler(name, schedule)
    except InvalidRequest as err:
        warnings.append(f"scheduler: {schedule!r} ignored ({err}); used 'Automatic'")
        schedule = "Automatic"
    return name, schedule


def _styles(styles: list[str], catalog, warnings: list[str]) -> list[str]:
    if not styles:
        return []
    known = catalog.style_names()
    for name in styles:
        if name not in known:
            warnings.append(f"styles: {name!r} ignored (not in the prompt book; GET /sdapi/v1/prompt-styles)")
    return [name for name in styles if name in known]


def _override_settings(overrides: dict[str, Any], catalog, data: dict[str, Any], warnings: list[str]) -> None:
    for key, value in overrides.items():
        if key == "sd_model_checkpoint":
            data["model"] = catalog.resolve_model(str(value))
        elif key in ("CLIP_stop_at_last_layers", "eta_noise_seed_delta"):
            data["clip_skip" if key.startswith("CLIP") else key] = value
        elif key == "sd_vae":
            data["vae"] = _vae_name(value, catalog)
        else:
            warnings.append(f"override_settings.{key}: ignored (huabu does not support it yet)")


def _vae_name(value: Any, catalog) -> str | None:
    """sd_vae as A1111 takes it: Automatic / None for the model's own, else a VAE the server lists (by name only:
    HTTP clients do not name files)."""
    if value in AUTOMATIC_VAE:
        return None
    names = {ref.name: ref for ref in list_vaes(catalog.settings.vae_dir)}
    found = names.get(str(value)) or next((ref for ref in names.values() if Path(ref.name).stem == str(value)), None)
    if found is None:
        raise InvalidRequest(f"sd_vae {str(value)[:80]!r} is not a VAE this server has (GET /sdapi/v1/sd-vae)")
    return found.name


def _img2img_fields(req: Img2ImgRequest, limits, data: dict[str, Any], warnings: list[str]) -> None:
    if not req.init_images:
        raise InvalidRequest("img2img needs init_images: a list with one base64-encoded image")
    images = [image_data_url(image, limits, f"init_images[{i}]") for i, image in enumerate(req.init_images)]
    data["init_image"] = images[0]
    if len(images) > 1:  # every image, each its own run (A1111 makes them one batch); none of the scripts as well
        if req.script_name:
            raise InvalidRequest("several init_images and a script_name: send one image with a script")
        data["script"] = {"name": "img2img batch", "args": {"images": images}}
    if not req.mask:
        return
    mask = image_data_url(req.mask, limits, "mask")
    if req.inpainting_mask_invert:
        mask = _inverted(mask)
    data.update(mode="inpaint", mask=mask)
    blur = req.mask_blur if req.mask_blur is not None else max(req.mask_blur_x, req.mask_blur_y)
    if req.mask_blur is None and req.mask_blur_x != req.mask_blur_y:
        warnings.append(f"mask_blur_x/mask_blur_y: one radius is used for both ({blur})")
    data["mask_blur"] = blur
    data.update(inpainting_fill=req.inpainting_fill, inpaint_full_res=req.inpaint_full_res,
                inpaint_full_res_padding=req.inpaint_full_res_padding)


OUTPAINT_SCRIPTS = ("Poor man's outpainting", "Outpainting mk2")
_DIRECTIONS = ("left", "right", "up", "down")


def _outpaint_script(name: str, args: list[Any], data: dict[str, Any], warnings: list[str]) -> None:
    """A1111's outpainting scripts by their script_args: Poor man's (pixels, mask_blur, inpainting_fill,
    directions) and mk2 (info, pixels, mask_blur, directions, fall-off, colour variation). mk2 starts the border
    from matched noise; huabu starts it from latent noise, the nearest it has."""
    defaults = [128, 4, 1, list(_DIRECTIONS)] if name.startswith("Poor") else [None, 128, 8, list(_DIRECTIONS), 1.0,
                                                                                 0.05]
    values = list(args[:len(defaults)]) + defaults[len(args):]
    if name.startswith("Poor"):
        pixels, blur, fill, directions = values
    else:
        _, pixels, blur, directions, falloff, variation = values
        fill = 2
        if (falloff, variation) != (1.0, 0.05):
            warnings.append("script_args: mk2's fall-off and colour variation are ignored (huabu starts the border "
                            "from latent noise)")
    try:
        pixels, blur, fill = int(pixels), int(blur), int(fill)
        directions = [str(side).lower() for side in directions]
    except (TypeError, ValueError):
        raise InvalidRequest(f"script_args of {name!r}: expected pixels, mask blur, ... as numbers") from None
    unknown = sorted(set(directions) - set(_DIRECTIONS))
    if unknown:
        raise InvalidRequest(f"script_args of {name!r}: unknown direction(s) {', '.join(unknown)}; use left, right, "
                             f"up, down")
    if data.pop("mask", None):
        warnings.append("mask: ignored (outpainting paints the new border)")
    # As the scripts do, the output is the grown canvas whatever width/height said.
    data.update(mode="inpaint", mask_blur=blur, inpainting_fill=fill, inpaint_full_res=False, width=None, height=None,
                **{f"outpaint_{side}": pixels if side in directions else 0 for side in _DIRECTIONS})


def _inverted(data_url: str) -> str:
    header, payload = data_url.split(",", 1)
    with Image.open(io.BytesIO(base64.b64decode(payload))) as image:
        inverted = ImageOps.invert(image.convert("L"))
    buffer = io.BytesIO()
    inverted.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


_UNIT_FIELDS = ("enabled", "module", "model", "weight", "resize_mode", "processor_res", "threshold_a", "threshold_b",
                "guidance_start", "guidance_end", "control_mode", "pixel_perfect")
_UNIT_SILENT = {"image", "input_image", "mask", "low_vram", "lowvram", "is_ui", "input_mode", "batch_images",
                "output_dir", "loopback", "hr_option", "save_detected_map", "advanced_weighting",
                "inpaint_crop_input_image"}


def controlnet_units(scripts: dict[str, Any], limits, warnings: list[str]) -> list[dict[str, Any]]:
    """`alwayson_scripts.controlnet.args` as sd-webui-controlnet reads it -> ControlUnit data. Images are raw base64,
    a data URL, or {"image": ..., "mask": ...}; a unit without one uses the img2img input."""
    units: list[dict[str, Any]] = []
    for name, script in scripts.items():
        if name.lower() != "controlnet":
            warnings.append(f"alwayson_scripts.{name}: ignored (huabu has no such script)")
            continue
        args = script.get("args", []) if isinstance(script, dict) else []
        for index, arg in enumerate(args if isinstance(args, list) else []):
            if not isinstance(arg, dict):
                warnings.append(f"alwayson_scripts.controlnet.args[{index}]: ignored (a unit must be a JSON object)")
                continue
            if arg.get("enabled", True) is False:
                continue
            unit = {key: arg[key] for key in _UNIT_FIELDS if key in arg and arg[key] is not None}
            if unit.get("module") == GLYPH and arg.get("text_boxes") is not None:
                unit["text_boxes"] = arg["text_boxes"]  # huabu's own: the words' boxes (or {text, box} objects)
            image = arg.get("image", arg.get("input_image"))
            if isinstance(image, dict):
                if image.get("mask"):
                    warnings.append(f"controlnet unit {index}: its mask is ignored")
                image = image.get("image")
            if image:
                unit["image"] = image_data_url(image, limits, f"controlnet unit {index} image")
            if arg.get("guessmode"):
                warnings.append(f"controlnet unit {index}: guessmode ignored (use control_mode)")
            for key in sorted(set(arg) - set(_UNIT_FIELDS) - _UNIT_SILENT - {"guessmode", *unit}):
                warnings.append(f"controlnet unit {index}: {key} ignored")
            units.append(unit)
    return units


_IP_ADAPTER_UNIT = ("module", "model", "weight", "image")


def ip_adapter_unit(unit: dict[str, Any], index: int, warnings: list[str]) -> dict[str, Any]:
    """An sd-webui-controlnet unit whose module is an IP-Adapter -> IPAdapterSpec data: its image, weight and
    model; the image prompt acts over every step, so a narrower guidance window is named in the warnings."""
    if unit.get("guidance_start", 0.0) > 0.0 or unit.get("guidance_end", 1.0) < 1.0:
        warnings.append(f"controlnet unit {index}: guidance window ignored (IP-Adapter units act on every step)")
    return {key: unit[key] for key in _IP_ADAPTER_UNIT if key in unit}


# --- responses -----------------------------------------------------------------------------------------------------

def info_json(req: _A1111Base, request: GenerateRequest, outcome: Outcome | None, job: Job,
              warnings: list[str], grid_text: str | None = None) -> str:
    """A1111's `info` string (Processed.js()): seeds, sizes, infotexts, model, plus huabu's `warnings`; with a
    returned batch grid its infotext comes first and index_of_first_image is 1."""
    used = GenerateRequest.from_data(outcome.request_used) if outcome else request
    model = outcome.model if outcome else {}
    infotexts = outcome.infotexts if outcome else []
    parsed = [parse_infotext(text) for text in infotexts]
    seeds = outcome.seeds if outcome else []
    own = info_keys()
    extra = {k: v for k, v in (parsed[0] if parsed else {}).items() if k not in own}
    subseed = req.subseed if req.subseed != -1 else (seeds[0] if seeds else -1)
    info = {
        "prompt": used.prompt, "all_prompts": [p["Prompt"] for p in parsed],
        "negative_prompt": used.negative_prompt, "all_negative_prompts": [p["Negative prompt"] for p in parsed],
        "seed": seeds[0] if seeds else used.seed, "all_seeds": seeds, "subseed": subseed,
        "all_subseeds": [subseed + i for i in range(len(seeds))], "subseed_strength": req.subseed_strength,
        "width": used.width, "height": used.height, "sampler_name": used.sampler, "cfg_scale": used.cfg_scale,
        "steps": used.steps, "batch_size": used.batch_size, "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": model.get("name"), "sd_model_hash": model.get("hash"), "sd_vae_name": None,
        "sd_vae_hash": None, "seed_resize_from_w": used.seed_resize_from_w or -1,
        "seed_resize_from_h": used.seed_resize_from_h or -1,
        "denoising_strength": used.denoising_strength if used.mode != "txt2img" or used.enable_hr else None,
        "extra_generation_params": extra, "index_of_first_image": 0 if grid_text is None else 1,
        "infotexts": infotexts if grid_text is None else [grid_text, *infotexts], "styles": used.styles,
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created)), "clip_skip": used.clip_skip,
        "is_using_inpainting_conditioning": bool(model.get("inpaint_unet")),
        "version": f"huabu {huabu.__version__}", "warnings": warnings,
        "interrupted": bool(outcome and outcome.interrupted), "job_id": job.id,
    }
    if parsed:  # what the first image's infotext states, by the field table's info names
        info.update(api_fields(infotext_values(parsed[0], errors=[]), "info"))
    return json.dumps(info, ensure_ascii=False)


async def _generate(http: Request, response: Response, req: _A1111Base, mode: str) -> dict[str, Any]:
    state = http.app.state.huabu
    loop = asyncio.get_running_loop()

    def accept() -> tuple[GenerateRequest, list[str], Job, asyncio.Event]:
        request, warnings = to_generate(req, state.catalog, mode)
        for line in warnings:
            log.info("A1111 request: %s", line)
        job = Job.new("image", request.to_data(), origin="a1111", save=req.save_images)
        # watched before it is submitted: the job may end before this thread returns
        waiter = state.queue.watch(job.id, loop, ends_only=True)
        try:
            state.queue.submit(job)
        except BaseException:
            state.queue.unwatch(job.id, waiter)
            raise
        return request, warnings, job, waiter

    request, warnings, job, waiter = await run_in_threadpool(accept)
    finished = await _wait_while_connected(http, state.queue, job.id, waiter)
    if finished is not None and finished.state == "failed":
        if finished.error_kind == "storage":
            raise StorageFull(finished.error or "the disk is full")
        raise InvalidRequest(finished.error or "generation failed") if finished.error_kind == "invalid" \
            else JobFailed(finished.error or "generation failed")
    outcome = state.queue.take_outcome(job.id)
    if outcome is not None and outcome.seconds is not None:  # so a client can tell the engine's time from the API's
        response.headers["Server-Timing"] = f"engine;dur={outcome.seconds * 1000:.1f}"
    options = {key: option(state.catalog, key) for key in ANSWER_OPTIONS}
    return await run_in_threadpool(_answer, req, request, outcome, finished or job, warnings, options,
                                   Path(os.path.realpath(state.settings.outputs_dir)))


ANSWER_OPTIONS = ("samples_format", "return_grid", "grid_save", "grid_only_if_multiple")  # read per call


def _answer(req: _A1111Base, request: GenerateRequest, outcome: Outcome | None, job: Job, warnings: list[str],
            options: dict[str, Any], outputs: Path) -> dict[str, Any]:
    """The response body; images are encoded here, on a worker thread, so a large image never blocks the event
    loop (and every other client) while it is encoded."""
    grid = _batch_grid(req, outcome, job, options, outputs)
    images = []
    if req.send_images:
        fmt = options["samples_format"]
        images = [encode_image(*grid, fmt)] if grid else []
        if outcome and outcome.encoded and image_format(fmt) == "PNG":  # PNGs with their infotexts already
            images += outcome.encoded
        elif outcome:
            images += [encode_image(image, text, fmt) for image, text in zip(outcome.images, outcome.infotexts)]
    parameters = req.model_dump(exclude=set(req.model_extra or {}))  # unknown fields are never echoed
    if isinstance(req, Img2ImgRequest) and not req.include_init_images:
        parameters.update(init_images=None, mask=None)
    grid_text = grid[1] if grid else None
    return {"images": images, "parameters": parameters,
            "info": info_json(req, request, outcome, job, warnings, grid_text)}


def _batch_grid(req: _A1111Base, outcome: Outcome | None, job: Job, options: dict[str, Any], outputs: Path
                ) -> tuple[Image.Image, str] | None:
    """A1111's batch grid (process_images): made when the call saves (`save_images`, which the API turns into
    do_not_save_grid = not save_images), grids are returned or saved, and there are two images or more (one with
    grid_only_if_multiple off). With return_grid it is returned, to go first; with grid_save it is saved as
    `grid-NNNN.png` beside the job's images. Scripts answer their own grids."""
    if not outcome or not outcome.images or req.script_name or not job.save:
        return None
    if len(outcome.images) < 2 and options["grid_only_if_multiple"]:
        return None
    if not (options["return_grid"] or options["grid_save"]):
        return None
    grid, text = batch_grid(outcome.images), outcome.infotexts[0]
    if options["grid_save"]:
        try:
            save_grid(grid, text, job_folder(outputs, job.id), "grid")
        except OSError as err:
            if not is_disk_full(err):
                raise
            raise StorageFull("the disk is full: the batch grid could not be saved") from None
    return (grid, text) if options["return_grid"] else None


async def _wait_while_connected(http: Request, queue, job_id: str, waiter: asyncio.Event) -> Job | None:
    """The finished job. A call is synchronous: once its client has gone, no one will read the images, so the job is
    cancelled (it still ends, and releases its state, like any other)."""
    waiting = asyncio.ensure_future(queue.wait(job_id, event=waiter))
    cancelled = False
    try:
        while not waiting.done():
            await asyncio.wait({waiting}, timeout=DISCONNECT_POLL)
            if not waiting.done() and not cancelled and await http.is_disconnected():
                log.info("A1111 job %s: the client disconnected; cancelling it", job_id)
                await run_in_threadpool(queue.cancel, job_id)
                cancelled = True
        return waiting.result()
    finally:
        if not waiting.done():  # this route itself was cancelled (the server is stopping)
            waiting.cancel()
            queue.cancel(job_id)


class JobFailed(Exception):
    """A job failed for a reason that is not the request's fault (HTTP 500 with the job's error line)."""


@router.post("/txt2img", response_model=GenerationResponse)
async def txt2img(http: Request, response: Response, req: Txt2ImgRequest) -> dict[str, Any]:
    return await _generate(http, response, req, "txt2img")


@router.post("/img2img", response_model=GenerationResponse)
async def img2img(http: Request, response: Response, req: Img2ImgRequest) -> dict[str, Any]:
    return await _generate(http, response, req, "img2img")


@router.post("/png-info")
def png_info(http: Request, req: PNGInfoRequest) -> dict[str, Any]:
    data_url = image_data_url(req.image, http.app.state.huabu.catalog.limits, "image")
    raw = base64.b64decode(data_url.split(",", 1)[1])
    try:
        with Image.open(io.BytesIO(raw)) as image:
            text = read_parameters(image) or ""
            items = {k: v for k, v in image.info.items() if k != "parameters" and isinstance(v, (str, int, float))}
    except (OSError, ValueError) as err:
        raise BadImage(f"image could not be read: {err}") from None
    return {"info": text, "items": items, "parameters": parse_infotext(text) if text else {}}


@router.post("/progress")
@router.get("/progress")
async def progress(http: Request, skip_current_image: bool = False) -> dict[str, Any]:
    return await run_in_threadpool(http.app.state.huabu.queue.progress_view, not skip_current_image)


@router.post("/interrupt")
def interrupt(http: Request) -> None:
    http.app.state.huabu.queue.interrupt_running(skip=False)


@router.post("/skip")
def skip(http: Request) -> None:
    http.app.state.huabu.queue.interrupt_running(skip=True)


@router.get("/options")
def get_options(http: Request) -> dict[str, Any]:
    options = current_options(http.app.state.huabu.catalog)
    options.update(memory_options(http.app.state.huabu.settings))
    return options


@router.post("/options")
def set_options(http: Request, options: dict[str, Any] = Body(...)) -> None:
    _check_memory_options(options, memory_options(http.app.state.huabu.settings))
    store_options(http.app.state.huabu.catalog, options)


def _check_memory_options(updates: dict[str, Any], current: dict[str, Any]) -> None:
    """Memory switches read back as they are (a client may POST back what it GOT) but only change at start-up."""
    for key, value in current.items():
        if key in updates and updates.pop(key) != value:
            flag = key.removeprefix("huabu_").replace("_", "-")
            raise InvalidRequest(f"{key} is set when the server starts (huabu serve --{flag}); it is {value!r}")


@router.get("/cmd-flags")
def get_cmd_flags(http: Request) -> dict[str, Any]:
    state = http.app.state.huabu
    return cmd_flags(state.config, state.settings)


@router.get("/sd-models")
def sd_models(http: Request) -> list[dict[str, Any]]:
    catalog = http.app.state.huabu.catalog
    return [catalog.model_item(ref) for ref in catalog.model_refs()]


@router.get("/samplers")
def samplers() -> list[dict[str, Any]]:
    from huabu.core.samplers import list_samplers

    return list_samplers()


@router.get("/schedulers")
def schedulers() -> list[dict[str, Any]]:
    from huabu.core.samplers import list_schedules

    return [{**row, "default_rho": None, "need_inner_model": None} for row in list_schedules()]


@router.get("/loras")
def loras(http: Request) -> list[dict[str, Any]]:
    return http.app.state.huabu.catalog.loras()


@router.post("/refresh-loras")
@router.post("/refresh-checkpoints")
@router.post("/refresh-vae")
@router.post("/refresh-embeddings")
def refresh() -> None:
    """Lists are read from disk on every call; nothing to refresh."""


@router.get("/prompt-styles")
def prompt_styles(http: Request) -> list[dict[str, Any]]:
    return http.app.state.huabu.catalog.styles()


@router.get("/memory")
def get_memory() -> dict[str, Any]:
    return memory()


@router.get("/embeddings")
def embeddings(http: Request) -> dict[str, Any]:
    from huabu.engine.embeddings import folder_text_width, list_embeddings

    catalog = http.app.state.huabu.catalog
    try:  # loaded = fits the current model's text encoder, as A1111 sorts them
        width = folder_text_width(catalog.models.resolve(catalog.default_model).path)
    except HuabuError:
        width = None
    settings = catalog.settings
    return list_embeddings(settings.embeddings_dir, width, settings.allow_unsafe_pickle)


@router.get("/scripts")
def scripts() -> dict[str, Any]:
    from huabu.engine.scripts import script_titles

    return {"txt2img": script_titles(), "img2img": [*script_titles(), *(name.lower() for name in OUTPAINT_SCRIPTS)]}


@router.get("/upscalers")
def upscalers(http: Request) -> list[dict[str, Any]]:
    files = Upscalers(http.app.state.huabu.settings.upscalers_dir).files()
    return [{"name": name, "model_name": name if name in files else None,
             "model_path": str(files[name]) if name in files else None, "model_url": None, "scale": 4}
            for name in [*BUILTIN_UPSCALERS, *files]]


@router.post("/extra-single-image")
async def extra_single_image(http: Request, req: ExtrasSingleRequest) -> dict[str, Any]:
    state = http.app.state.huabu
    images, info = await run_in_threadpool(extras_images, req, [req.image], state.catalog.limits,
                                           Upscalers(state.settings.upscalers_dir))
    return {"html_info": info, "image": images[0]}


@router.post("/extra-batch-images")
async def extra_batch_images(http: Request, req: ExtrasBatchRequest) -> dict[str, Any]:
    state = http.app.state.huabu
    images, info = await run_in_threadpool(extras_images, req, batch_images(req), state.catalog.limits,
                                           Upscalers(state.settings.upscalers_dir))
    return {"html_info": info, "images": images}


@router.get("/latent-upscale-modes")
def latent_upscale_modes() -> list[dict[str, Any]]:
    return [{"name": name} for name in LATENT_UPSCALE_MODES]


@router.get("/sd-vae")
def sd_vae(http: Request) -> list[dict[str, Any]]:
    return [{"model_name": ref.name, "filename": str(ref.path)}
            for ref in list_vaes(http.app.state.huabu.settings.vae_dir)]


def _empty_list() -> list:
    return []


for _path in ("/hypernetworks", "/face-restorers", "/realesrgan-models", "/sd-modules", "/script-info",
              "/extensions"):
    router.add_api_route(_path, _empty_list, methods=["GET"], name=_path.strip("/"))
