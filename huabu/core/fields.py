"""The A1111 infotext fields, one row each: the infotext key, the request field(s) it holds, how a value is written
and read back, and what the A1111 API calls it.

Rows are in A1111 1.10's order (`processing.create_infotext`: its own fields, then `extra_generation_params`, where
A1111 puts Mask blur and the Lora hashes), then the video fields. `request_to_infotext_params` gives the fields
the engine writes (tests/test_fields.py holds it to the engine's own output); reproduce, the studio and the A1111
API read infotexts with `infotext_values` / `infotext_to_request_fields`. ControlNet units are read by
huabu.core.control_infotext and written by the engine, which passes them in as extra fields. A new field is one
new row.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from huabu.core.apps import parse_numbers
from huabu.core.control_infotext import PREFIX as CONTROL_PREFIX
from huabu.core.control_infotext import parse_unit, units_in_params
from huabu.core.control_units import unit_fields_from_infotext
from huabu.core.errors import InvalidRequest
from huabu.core.ip_adapters import ip_adapter_fields_from_infotext, is_ip_adapter_module
from huabu.core.requests import GenerateRequest, RequestModel, VideoRequest
from huabu.core.samplers import AUTOMATIC, find_schedule, parse_sampler, uses_eta_noise
from huabu.core.text_boxes import format_text_boxes, parse_text_boxes

_SIZE = re.compile(r"^(\d+)x(\d+)$")


def format_number(value: float) -> str:
    """Numbers in infotexts as A1111 shows them: 7 rather than 7.0."""
    return str(int(value)) if float(value).is_integer() else str(value)


def _whole(value: object) -> tuple[int]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (int(value),)
    try:
        return (int(str(value)),)
    except ValueError:
        raise ValueError(f"{str(value)[:50]!r} is not a whole number") from None


def _number(value: object) -> tuple[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),)
    try:
        return (float(str(value)),)
    except ValueError:
        raise ValueError(f"{str(value)[:50]!r} is not a number") from None


def _text(value: object) -> tuple[str]:
    return (str(value),)


def _size(value: object) -> tuple[int, int]:
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{str(value)[:50]!r} is not WIDTHxHEIGHT")
    return int(match.group(1)), int(match.group(2))


def _point(value: object) -> tuple[list[int]]:
    return (parse_numbers(str(value), 2, "App point"),)


def _box(value: object) -> tuple[list[int]]:
    return (parse_numbers(str(value), 4, "App box"),)


def _sampler(value: object) -> tuple[str]:
    return (parse_sampler(str(value))[0].name,)  # "DPM++ 2M Karras" -> "DPM++ 2M"; its schedule: see _split_sampler


def _schedule(value: object) -> tuple[str]:
    return (find_schedule(str(value)).label,)


def _same(value: Any) -> Any:
    return value


def _always(values: Mapping[str, Any]) -> bool:
    return True


FILL_NAMES = ("fill", "original", "latent noise", "latent nothing")  # A1111's inpainting_fill 0-3


def _choice(value: object, names: tuple[str, ...]) -> int:
    if str(value) not in names:
        raise ValueError(f"{str(value)[:50]!r} is not one of {', '.join(names)}")
    return names.index(str(value))


SIDES = ("left", "right", "up", "down")
_SIDES = re.compile(r"^left (\d+) right (\d+) up (\d+) down (\d+)$")


def _sides(value: object) -> tuple[int, int, int, int]:
    match = _SIDES.match(str(value))
    if not match:
        raise ValueError(f"{str(value)[:50]!r} is not 'left N right N up N down N'")
    return tuple(int(group) for group in match.groups())


def _inpaint(values: Mapping[str, Any]) -> bool:
    return values.get("mode") == "inpaint"


def _hires(values: Mapping[str, Any]) -> bool:
    return bool(values.get("enable_hr"))


def _text_boxes(boxes: list[Any]) -> str:
    return format_text_boxes([(box.text, box.box) for box in boxes])


def _boxes_placed(values: Mapping[str, Any]) -> bool:
    """Text boxes are written once the engine has placed every word (the request as used)."""
    return bool(values["text_boxes"]) and all(box.box is not None for box in values["text_boxes"])


HIRES_KEYS = ("Hires upscale", "Hires resize")  # an infotext with one of these was a txt2img with the hires fix
# Request fields no infotext key holds alone, named alike in the A1111 API: enable_hr is read off HIRES_KEYS.
_API_ONLY = ("enable_hr",)


@dataclass(frozen=True)
class InfotextField:
    """One `Key: value` of an infotext.

    `names` are the request fields it holds (Size holds width and height), or values only the engine knows (the
    model's hash, the LoRA hashes), which request_to_infotext_params takes as arguments. `format` gets the names'
    values and returns what the infotext shows (None: left out); `parse` gets what parse_infotext read and returns
    the names' values, raising ValueError or InvalidRequest when it cannot. `written` says whether a request writes
    the field at all. `api` are the A1111 API's payload fields for `names`, `info` the keys its `info` JSON reports
    them under, `setting` the A1111 option it stands for instead (override_settings)."""

    key: str
    names: tuple[str, ...]
    parse: Callable[[object], tuple]
    format: Callable[..., Any] = _same
    written: Callable[[Mapping[str, Any]], bool] = _always
    required: bool = False  # a reproduction cannot do without it
    api: tuple[str, ...] = ()
    info: tuple[str, ...] = ()
    setting: str | None = None


_F = InfotextField  # keeps each row on a line or two
FIELDS: tuple[InfotextField, ...] = (
    _F("Steps", ("steps",), _whole, required=True, api=("steps",), info=("steps",)),
    _F("Sampler", ("sampler",), _sampler, required=True, api=("sampler_name",), info=("sampler_name",)),
    _F("Schedule type", ("schedule_type",), _schedule, api=("scheduler",)),
    _F("CFG scale", ("cfg_scale",), _number, format_number, required=True, api=("cfg_scale",), info=("cfg_scale",)),
    _F("Seed", ("seed",), _whole, required=True, api=("seed",), info=("seed",)),
    _F("Size", ("width", "height"), _size, lambda width, height: f"{width}x{height}", required=True,
       api=("width", "height"), info=("width", "height")),
    _F("Model hash", ("model_hash",), _text, info=("sd_model_hash",)),
    _F("Model", ("model",), _text, info=("sd_model_name",)),
    _F("VAE hash", ("vae_hash",), _text, info=("sd_vae_hash",)),
    _F("VAE", ("vae",), _text, info=("sd_vae_name",), setting="sd_vae"),
    _F("Variation seed", ("subseed",), _whole, written=lambda values: values["subseed_strength"] != 0,
       api=("subseed",), info=("subseed",)),
    _F("Variation seed strength", ("subseed_strength",), _number, format_number,
       lambda values: values["subseed_strength"] != 0, api=("subseed_strength",), info=("subseed_strength",)),
    _F("Seed resize from", ("seed_resize_from_w", "seed_resize_from_h"), _size, lambda w, h: f"{w}x{h}",
       lambda values: values["seed_resize_from_w"] > 0 and values["seed_resize_from_h"] > 0,
       api=("seed_resize_from_w", "seed_resize_from_h"), info=("seed_resize_from_w", "seed_resize_from_h")),
    _F("Denoising strength", ("denoising_strength",), _number, format_number, lambda values: values["strength_used"],
       api=("denoising_strength",), info=("denoising_strength",)),
    _F("Clip skip", ("clip_skip",), _whole, written=lambda values: values["clip_skip"] > 1, info=("clip_skip",),
       setting="CLIP_stop_at_last_layers"),
    _F("ENSD", ("eta_noise_seed_delta",), _whole,
       written=lambda values: values["eta_noise_seed_delta"] != 0 and uses_eta_noise(values["sampler"]),
       setting="eta_noise_seed_delta"),
    _F("Shift", ("shift",), _number, format_number, lambda values: values["shift"] is not None),
    # The hires fix's fields, in the order A1111's txt2img adds them to extra_generation_params.
    _F("Hires sampler", ("hr_sampler",), _sampler, written=lambda values: _hires(values) and values["hr_sampler"]
       not in (None, values["sampler"]), api=("hr_sampler_name",)),
    _F("Hires prompt", ("hr_prompt",), _text, written=lambda values: _hires(values) and values["hr_prompt"]
       not in ("", values["prompt"]), api=("hr_prompt",)),
    _F("Hires negative prompt", ("hr_negative_prompt",), _text, written=lambda values: _hires(values) and
       values["hr_negative_prompt"] not in ("", values["negative_prompt"]), api=("hr_negative_prompt",)),
    _F("Hires upscale", ("hr_scale",), _number, format_number,
       lambda values: _hires(values) and not (values["hr_resize_x"] or values["hr_resize_y"]), api=("hr_scale",)),
    _F("Hires resize", ("hr_resize_x", "hr_resize_y"), _size, lambda x, y: f"{x}x{y}",
       lambda values: _hires(values) and bool(values["hr_resize_x"] or values["hr_resize_y"]),
       api=("hr_resize_x", "hr_resize_y")),
    _F("Hires steps", ("hr_second_pass_steps",), _whole,
       written=lambda values: _hires(values) and values["hr_second_pass_steps"] > 0, api=("hr_second_pass_steps",)),
    _F("Hires upscaler", ("hr_upscaler",), _text, written=_hires, api=("hr_upscaler",)),
    _F("Mask blur", ("mask_blur",), _whole, written=lambda values: values["mode"] == "inpaint"),
    # huabu's own: A1111 keeps these out of its infotexts, but an image cannot be remade without them.
    _F("Masked content", ("inpainting_fill",), lambda value: (_choice(value, FILL_NAMES),),
       lambda fill: FILL_NAMES[fill], lambda values: _inpaint(values) and values["inpainting_fill"] != 1,
       api=("inpainting_fill",)),
    _F("Inpaint area", ("inpaint_full_res",), lambda value: (str(value) == "Only masked",),
       lambda full: "Only masked", lambda values: _inpaint(values) and values["inpaint_full_res"],
       api=("inpaint_full_res",)),
    _F("Only masked padding", ("inpaint_full_res_padding",), _whole,
       written=lambda values: _inpaint(values) and values["inpaint_full_res"], api=("inpaint_full_res_padding",)),
    _F("Outpaint", ("outpaint_left", "outpaint_right", "outpaint_up", "outpaint_down"), _sides,
       lambda *sides: " ".join(f"{name} {value}" for name, value in zip(SIDES, sides)),
       lambda values: _inpaint(values) and any(values[f"outpaint_{name}"] for name in SIDES)),
    _F("Lora hashes", ("lora_hashes",), _text),
    _F("TI hashes", ("ti_hashes",), _text),
    # huabu's own, for the glyph unit: each quoted word and the box it was drawn in (huabu.core.text_boxes).
    _F("Text boxes", ("text_boxes",), lambda value: (parse_text_boxes(value),), _text_boxes, _boxes_placed),
    _F("Frames", ("frames",), _whole),
    _F("FPS", ("fps",), _whole),
    # The course's applications (huabu.core.apps): the app and its inputs, written by the app's extension; the input
    # images as pixel hashes, which `reproduce` checks the images it is given against.
    _F("App", ("app",), _text),
    _F("App keep", ("keep",), _text),
    _F("App segmenter", ("app_segmenter",), _text),
    _F("App point", ("point",), _point),
    _F("App box", ("box",), _box),
    _F("App image", ("image_hash",), _text),
    _F("App mask", ("mask_hash",), _text),
    _F("App reference", ("reference_hash",), _text),
    _F("App control", ("app_control",), _text),
    _F("App style", ("app_style",), _text),  # portrait renders: the prompt-book style
)

# Values only the apps write (no request has them): allowed as row names beside the request fields.
APP_ONLY = ("app_segmenter", "image_hash", "mask_hash", "reference_hash", "app_control", "app_style")


def request_to_infotext_params(request: GenerateRequest | VideoRequest, *, seed: int | None = None,
                               model: str | None = None, model_hash: str | None = None,
                               lora_hashes: str | None = None, strength_used: bool | None = None,
                               extra: Mapping[str, Any] | None = None, subseed: int | None = None,
                               vae_hash: str | None = None, ti_hashes: str | None = None) -> dict[str, Any]:
    """The `key: value` fields of one image or video, in A1111 1.10's order (None = left out), as
    huabu.core.pnginfo.create_infotext takes them.

    `request` is the request as used (seed, size, sampler and schedule resolved). `seed` is the image's own seed
    (default: the request's), `model` the model's name (default: the request's model), `model_hash` its short hash,
    `lora_hashes` A1111's `Lora hashes` text, `ti_hashes` its `TI hashes` text, `subseed` the image's own
    variation seed. `strength_used` says whether denoising_strength acted (default: img2img, inpaint and the hires
    fix; videos with an init image and no SparseCtrl). `extra` (ControlNet units, the video model ...) follows the
    table's fields."""
    values: dict[str, Any] = dict(request)
    values.update(model_hash=model_hash, lora_hashes=lora_hashes, vae_hash=vae_hash)
    if ti_hashes:  # absent rather than None: outputs without embeddings keep exactly their old fields
        values["ti_hashes"] = ti_hashes
    if seed is not None:
        values["seed"] = seed
    if subseed is not None:
        values["subseed"] = subseed
    if model is not None:
        values["model"] = model
    if strength_used is None:
        strength_used = (request.mode != "txt2img" or request.enable_hr if isinstance(request, GenerateRequest)
                         else bool(request.init_image and not request.sparse_control))
    values["strength_used"] = strength_used
    params: dict[str, Any] = {}
    for field in FIELDS:
        if all(name in values for name in field.names):  # Mask blur: stills only; Frames, FPS: videos only
            shown = field.written(values) and all(values[name] is not None for name in field.names)
            params[field.key] = field.format(*(values[name] for name in field.names)) if shown else None
    params.update(extra or {})
    return params


def _split_sampler(parsed: Mapping[str, Any]) -> dict[str, Any]:
    """As A1111's parse_generation_parameters: an older infotext names its schedule inside the sampler name
    ("DPM++ 2M Karras") and has no `Schedule type`."""
    found = dict(parsed)
    if "Sampler" in found and "Schedule type" not in found:
        try:
            _, schedule = parse_sampler(str(found["Sampler"]))
        except InvalidRequest:
            return found  # the Sampler row reports it
        if schedule.label != AUTOMATIC:
            found["Schedule type"] = schedule.label
    return found


def infotext_values(parsed: Mapping[str, Any], errors: list[str] | None = None) -> dict[str, Any]:
    """Every table field an infotext states (huabu.core.pnginfo.parse_infotext's result), by request field name,
    including the engine-only model_hash and lora_hashes; prompt and negative_prompt; `controlnets` when it has
    ControlNet units (ControlUnit fields, without their images) and `ip_adapters` when some are IP-Adapter units
    (IPAdapterSpec fields, without their images).

    A value that cannot be read raises InvalidRequest naming its key; when `errors` is given, that field is left
    out and the message appended there instead. Empty values count as absent."""
    parsed = _split_sampler(parsed)
    values: dict[str, Any] = {"prompt": str(parsed.get("Prompt", "")),
                              "negative_prompt": str(parsed.get("Negative prompt", ""))}
    for field in FIELDS:
        raw = parsed.get(field.key)
        if raw is None or raw == "":
            continue
        try:
            values.update(zip(field.names, field.parse(raw)))
        except (ValueError, InvalidRequest) as err:
            message = f"the parameters' {field.key}: {err}"
            if errors is None:
                raise InvalidRequest(message) from None
            errors.append(message)
    try:
        units = units_in_params(parsed)
    except ValueError as err:
        if errors is None:
            raise InvalidRequest(f"the parameters' ControlNet units: {err}") from None
        errors.append(f"the parameters' ControlNet units: {err}")
        units = []
    # sd-webui-controlnet writes IP-Adapter units as ControlNet units too; they become image prompts.
    controlnets = [unit_fields_from_infotext(unit) for unit in units if not is_ip_adapter_module(unit.get("module"))]
    ip_adapters = [ip_adapter_fields_from_infotext(unit) for unit in units if is_ip_adapter_module(unit.get("module"))]
    if controlnets:
        values["controlnets"] = controlnets
    if ip_adapters:
        values["ip_adapters"] = ip_adapters
    if any(key in parsed for key in HIRES_KEYS):
        values["enable_hr"] = True
    return values


def infotext_to_request_fields(parsed: Mapping[str, Any], request_type: type[RequestModel] = GenerateRequest,
                               errors: list[str] | None = None) -> dict[str, Any]:
    """The fields of `request_type` an infotext states (see infotext_values): what a request needs to remake the
    image, given its input images (and ControlNet images) and, for stills, its mode (infotext_mode)."""
    return {name: value for name, value in infotext_values(parsed, errors).items()
            if name in request_type.model_fields}


def infotext_mode(parsed: Mapping[str, Any]) -> str:
    """The GenerateRequest mode an infotext was made in: only inpaint writes Mask blur, only img2img, inpaint and
    the hires fix Denoising strength (so Mask blur alone is an InvalidRequest: the strength to remake it with is
    unknown)."""
    if any(key in parsed for key in HIRES_KEYS):
        return "txt2img"
    if "Outpaint" in parsed:
        return "inpaint"
    if "Mask blur" in parsed and "Denoising strength" not in parsed:
        raise InvalidRequest("the parameters have Mask blur (inpaint) but lack Denoising strength; cannot reproduce")
    return "inpaint" if "Mask blur" in parsed else "img2img" if "Denoising strength" in parsed else "txt2img"


def missing_keys(parsed: Mapping[str, Any]) -> list[str]:
    """The fields a reproduction needs that an infotext lacks."""
    return [field.key for field in FIELDS if field.required and parsed.get(field.key) in (None, "")]


def api_fields(values: Mapping[str, Any], column: Literal["api", "info"]) -> dict[str, Any]:
    """Request-named values (infotext_values) renamed to the A1111 API's names: column "api" for a txt2img/img2img
    payload, "info" for the `info` JSON. Values with no name there are left out."""
    renamed: dict[str, Any] = {name: values[name] for name in _API_ONLY if column == "api" and name in values}
    for field in FIELDS:
        for name, outer in zip(field.names, getattr(field, column)):
            if name in values:
                renamed[outer] = values[name]
    return renamed


def fields_from_api(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of api_fields(..., "api"): an A1111 payload's infotext fields, by request field name."""
    found = {name: payload[name] for name in _API_ONLY if name in payload}
    found.update({name: payload[outer] for field in FIELDS for name, outer in zip(field.names, field.api)
                  if outer in payload})
    return found


def api_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """Request-named values that A1111 takes as options (override_settings), by option name."""
    return {field.setting: values[field.names[0]] for field in FIELDS
            if field.setting and field.names[0] in values}


def info_keys() -> frozenset[str]:
    """Infotext keys whose values the A1111 `info` JSON reports under names of its own (with the prompts, Size's
    parts and the Version), so that everything else is its extra_generation_params."""
    own = {field.key for field in FIELDS if field.info}
    return frozenset(own | {"Prompt", "Negative prompt", "Size-1", "Size-2", "Version"})


def readable_params(parsed: Mapping[str, Any]) -> dict[str, Any]:
    """A parsed infotext with each ControlNet unit's value as an object (png-info --json); a value not in the
    extension's format stays text."""
    readable = dict(parsed)
    for key, value in parsed.items():
        if key.startswith(CONTROL_PREFIX) and isinstance(value, str):
            try:
                readable[key] = parse_unit(value)
            except ValueError:
                continue
    return readable
