"""The one A1111 field table (huabu.core.fields): what the engine writes today, round trips, and the faces that read
infotexts through it (reproduce, the studio, the A1111 API)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from huabu.core import fields
from huabu.core.apps import AppRequest
from huabu.core.control_infotext import serialize_unit, thresholds_shown
from huabu.core.errors import InvalidRequest
from huabu.core.pnginfo import create_infotext, parse_infotext
from huabu.core.requests import GenerateRequest, VideoRequest

MODEL = SimpleNamespace(name="tiny-sd", short_hash="0123abcd45")
CANNY = {"module": "canny", "model": "tiny-canny [d14c016b]", "weight": 0.8, "resize_mode": "Crop and Resize",
         "processor_res": 512, "threshold_a": 100, "threshold_b": 200, "guidance_start": 0.0, "guidance_end": 0.5,
         "pixel_perfect": True, "control_mode": "Balanced"}
COLOR = {**CANNY, "module": "color", "model": "tiny-color [0badf00d]", "weight": 1.0, "threshold_a": 0.5,
         "threshold_b": 0.5, "guidance_end": 1.0, "pixel_perfect": False, "processor_res": 64,
         "resize_mode": "Resize and Fill", "control_mode": "My prompt is more important"}
UNITS = {"ControlNet 0": serialize_unit(CANNY), "ControlNet 1": serialize_unit(COLOR)}


def _still(**changes) -> GenerateRequest:
    base = dict(prompt="a red fox", negative_prompt="blurry", steps=12, cfg_scale=6.5, sampler="Euler a",
                schedule_type="Uniform", seed=40, width=64, height=48, model="tiny-sd")
    return GenerateRequest.create(**{**base, **changes})


def _video(**changes) -> VideoRequest:
    base = dict(prompt="a boat", steps=6, cfg_scale=7.0, sampler="DPM++ 2M", schedule_type="Karras", seed=3,
                width=64, height=64, frames=8, fps=6)
    return VideoRequest.create(**{**base, **changes})


def _loras():
    from huabu.engine.loras import ResolvedLora

    return [ResolvedLora("tiny:style,x", Path("a.safetensors"), 0.8, None, "f" * 64, "abcdef0123456789"),
            ResolvedLora("other", Path("b.safetensors"), 1.0, None, "0" * 64)]


STILLS = {
    "txt2img": (_still(), 41, [], {}),
    "img2img, clip skip, loras": (_still(mode="img2img", init_image="in.png", denoising_strength=0.5, clip_skip=2),
                                  40, "loras", {}),
    "inpaint, controlnet": (_still(mode="inpaint", init_image="in.png", mask="m.png", mask_blur=3, cfg_scale=7.0),
                            44, [], UNITS),
}


# What the engine wrote before the field table, captured from its own code: the table must go on writing it.
GOLDEN = json.loads((Path(__file__).parent / "engine_infotext_golden.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", STILLS)
def test_stills_match_what_the_engine_wrote_before_the_table(case):
    from huabu.engine.infotext import output_params

    request, seed, loras, extra = STILLS[case]
    loras = _loras() if loras == "loras" else loras
    ours = output_params(request, MODEL, loras, dict(extra), seed=seed)
    assert _written(ours) == _written(dict(GOLDEN[f"still:{case}"]))


def _written(params: dict) -> list[list]:
    """The fields an infotext shows, in order: rows added since (variation seeds, hires fix) are None for these
    requests and write nothing."""
    return [[key, value] for key, value in params.items() if value is not None]


VIDEOS = {
    "animatediff": (_video(), "AnimateDiff", {}, None),
    "image to video, controlnet": (_video(init_image="in.png", denoising_strength=0.6, clip_skip=3), "AnimateDiff",
                                   UNITS, None),
    "sparsectrl": (_video(init_image="in.png", sparse_control="sparse"), "AnimateDiff", {}, None),
    "i2vgen-xl": (_video(init_image="in.png"), "I2VGen-XL", {"Video model": "I2VGen-XL"}, False),
    "modelscope": (_video(), "ModelScope", {"Video model": "ModelScope"}, None),
}


@pytest.mark.parametrize("case", VIDEOS)
def test_videos_match_what_the_engine_wrote_before_the_table(case):
    from huabu.engine.infotext import output_params

    request, kind, extra, strength_used = VIDEOS[case]
    ours = output_params(request, MODEL, _loras(), dict(extra), strength_used=strength_used)
    assert _written(ours) == _written(dict(GOLDEN[f"video:{case}"]))


def _round_trip(request, request_type, **runtime) -> dict:
    params = fields.request_to_infotext_params(request, **runtime)
    text = create_infotext(request.prompt, request.negative_prompt, params, "0.1.0")
    return fields.infotext_to_request_fields(parse_infotext(text), request_type)


def _stated(request, names) -> dict:
    return {name: getattr(request, name) for name in names}


COMMON = ("prompt", "negative_prompt", "steps", "sampler", "schedule_type", "cfg_scale", "seed", "width", "height",
          "model")


def test_round_trip_txt2img_and_inpaint():
    plain = _still()
    assert _round_trip(plain, GenerateRequest) == _stated(plain, COMMON)
    inpaint = _still(mode="inpaint", init_image="in.png", mask="m.png", mask_blur=3, denoising_strength=0.35,
                     clip_skip=2)
    back = _round_trip(inpaint, GenerateRequest)
    assert back == _stated(inpaint, (*COMMON, "denoising_strength", "clip_skip", "mask_blur"))
    text = create_infotext("x", "", fields.request_to_infotext_params(inpaint), "0")
    assert fields.infotext_mode(parse_infotext(text)) == "inpaint"
    assert GenerateRequest.create(**back, mode="inpaint", init_image="in.png", mask="m.png") == inpaint


def test_round_trip_video():
    video = _video(init_image="in.png", denoising_strength=0.6, clip_skip=2, model="tiny-sd")
    back = _round_trip(video, VideoRequest)
    assert back == _stated(video, (*COMMON, "denoising_strength", "clip_skip", "frames", "fps"))
    assert "mask_blur" not in back and "Mask blur" not in fields.request_to_infotext_params(video)


def test_round_trip_controlnet_units_and_engine_values():
    # A set threshold equal to the hidden slider's 0.5 reads back as unset, as in sd-webui-controlnet.
    units = [{**CANNY, "threshold_a": 50.0, "threshold_b": None, "image": "a.png"},
             {**COLOR, "threshold_a": None, "threshold_b": None, "image": "b.png"}]
    request = _still(controlnets=units)
    # As the engine writes them: thresholds the request leaves unset show the module's defaults.
    extra = {f"ControlNet {i}": serialize_unit({**unit.model_dump(), **dict(zip(
        ("threshold_a", "threshold_b"), thresholds_shown(unit.module, unit.threshold_a, unit.threshold_b)))})
        for i, unit in enumerate(request.controlnets)}
    params = fields.request_to_infotext_params(request, model_hash="0123abcd45", lora_hashes="style: abcdef012345",
                                               extra=extra)
    parsed = parse_infotext(create_infotext(request.prompt, "", params, "0"))
    values = fields.infotext_values(parsed)
    assert (values["model_hash"], values["lora_hashes"]) == ("0123abcd45", "style: abcdef012345")
    stated = fields.infotext_to_request_fields(parsed)
    stated["controlnets"] = [{**unit, "image": image} for unit, image in zip(stated["controlnets"],
                                                                              ("a.png", "b.png"))]
    back = GenerateRequest.create(**stated)
    assert back.controlnets == request.controlnets
    assert back.model_copy(update={"negative_prompt": "blurry"}) == request


def test_table_has_one_row_per_key_and_field():
    keys = [field.key for field in fields.FIELDS]
    names = [name for field in fields.FIELDS for name in field.names]
    assert len(keys) == len(set(keys)) and len(names) == len(set(names))
    engine_only = {"model_hash", "lora_hashes", "vae_hash", "ti_hashes"}
    known = (set(GenerateRequest.model_fields) | set(VideoRequest.model_fields) | set(AppRequest.model_fields)
             | engine_only | set(fields.APP_ONLY))
    assert set(names) <= known
    for field in fields.FIELDS:
        assert not field.api or len(field.api) == len(field.names), field.key
        assert not field.info or len(field.info) == len(field.names), field.key
    api = [name for field in fields.FIELDS for name in field.api]
    assert len(api) == len(set(api))


def test_older_infotexts_and_bad_values():
    old = parse_infotext("a cat\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x512")
    assert fields.infotext_to_request_fields(old)["schedule_type"] == "Karras"
    assert fields.infotext_to_request_fields(old)["sampler"] == "DPM++ 2M"
    bad = parse_infotext("a cat\nSteps: many, Sampler: Restart, CFG scale: 7, Seed: 1, Size: 5x")
    with pytest.raises(InvalidRequest, match="the parameters' Steps: 'many' is not a whole number"):
        fields.infotext_values(bad)
    errors: list[str] = []
    assert fields.infotext_values(bad, errors) == {"prompt": "a cat", "negative_prompt": "", "cfg_scale": 7.0,
                                                   "seed": 1}
    assert [line.split(":")[0] for line in errors] == ["the parameters' Steps", "the parameters' Sampler",
                                                       "the parameters' Size"]
    assert fields.missing_keys(parse_infotext("a cat\nSteps: 2, Seed: 1, Sampler: , Version: huabu 0")) == \
        ["Sampler", "CFG scale", "Size"]


def test_studio_fields_are_the_tables():
    from huabu.ui.fields import fields_from_infotext

    request = _still(mode="inpaint", init_image="in.png", mask="m.png", clip_skip=3)
    text = create_infotext(request.prompt, request.negative_prompt,
                           fields.request_to_infotext_params(request, extra=UNITS), "0")
    studio = fields_from_infotext(text)
    assert studio == fields.infotext_to_request_fields(parse_infotext(text), errors=[])
    assert studio["clip_skip"] == 3 and len(studio["controlnets"]) == 2


def test_api_infotext_and_info_are_the_tables():
    from huabu.server.a1111 import Txt2ImgRequest, info_json, to_generate
    from huabu.server.jobs import Job
    from huabu.server.runner import Outcome

    class Catalog:
        limits = None
        default_model = None
        default_clip_skip = 1
        options: dict = {}
        lock = contextlib.nullcontext()

        def check_http_request(self, request):
            pass

    request = _still(clip_skip=2)
    text = create_infotext(request.prompt, request.negative_prompt,
                           fields.request_to_infotext_params(request, model_hash="0123abcd45", extra=UNITS), "0")
    table = fields.infotext_to_request_fields(parse_infotext(text))
    values = fields.infotext_values(parse_infotext(text))
    assert fields.fields_from_api(fields.api_fields(values, "api")) == \
        {name: values[name] for name in ("steps", "sampler", "schedule_type", "cfg_scale", "seed", "width", "height")}
    made, warnings = to_generate(Txt2ImgRequest(infotext=text), Catalog(), "txt2img")
    assert warnings == []
    assert {name: getattr(made, name) for name in table if name not in ("model", "controlnets")} == \
        {name: value for name, value in table.items() if name not in ("model", "controlnets")}

    outcome = Outcome([], [request.seed], [text], request.to_data(), {"name": "tiny-sd", "hash": "0123abcd45"})
    info = json.loads(info_json(Txt2ImgRequest(), request, outcome, Job.new("image", request.to_data()), []))
    assert fields.api_fields(values, "info") == {name: info[name] for name in fields.api_fields(values, "info")}
    assert set(info["extra_generation_params"]) == {"Schedule type", "ControlNet 0", "ControlNet 1"}


def test_png_info_json_shows_units_as_objects():
    parsed = parse_infotext(create_infotext("x", "", {"Steps": 2, **UNITS, "ControlNet 2": "odd"}, "0"))
    readable = fields.readable_params(parsed)
    assert readable["ControlNet 0"]["guidance_end"] == 0.5 and readable["ControlNet 2"] == "odd"
