"""sd-webui-controlnet's own routes, which A1111 clients call beside /sdapi/v1 to find what a unit may name and to
run a preprocessor alone: /controlnet/version, /model_list, /module_list and /detect (its API version 2).

The model list holds what units may name: the ControlNet and IP-Adapter folders' models and the default model's
own (huabu-tiny's ControlNets and IP-Adapter), titled `name [hash]` as the extension titles them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from huabu.core.errors import HuabuError, InvalidRequest
from huabu.core.ip_adapters import CLIP_MODULES, is_ip_adapter_module
from huabu.core.text_boxes import GLYPH
from huabu.engine.control.canny import DEFAULT_HIGH, DEFAULT_LOW
from huabu.engine.control.images import MAX_RESOLUTION, MIN_RESOLUTION
from huabu.engine.control.registry import ALIASES, PREPROCESSORS, get_preprocessor
from huabu.engine.controlnets import ANNOTATORS, ControlNetManager, run_preprocessor
from huabu.engine.images import load_image
from huabu.engine.ip_adapters import IPAdapterManager
from huabu.server.runner import png_base64
from huabu.server.security import CheckedRoute, image_data_url

router = APIRouter(prefix="/controlnet", tags=["A1111-compatible"], route_class=CheckedRoute)

API_VERSION = 2  # the extension's /controlnet/version for the unit format huabu reads
MAX_DETECT_IMAGES = 16


class DetectRequest(BaseModel):
    """The extension's /controlnet/detect body; thresholds left out (or -1) take the preprocessor's defaults."""

    model_config = ConfigDict(extra="ignore")

    controlnet_module: str = "none"
    controlnet_input_images: list[str] = Field(default_factory=list, max_length=MAX_DETECT_IMAGES)
    controlnet_processor_res: int = 512
    controlnet_threshold_a: float | None = None
    controlnet_threshold_b: float | None = None


@router.get("/version")
def version() -> dict[str, int]:
    return {"version": API_VERSION}


@router.get("/model_list")
def model_list(http: Request) -> dict[str, list[str]]:
    state = http.app.state.huabu
    model = _default_model_path(state)
    controlnets, ip_adapters = ControlNetManager(state.settings), IPAdapterManager(state.settings)
    refs = [*controlnets.list_controlnets(), *controlnets.own_controlnets(model),
            *ip_adapters.list_ip_adapters(), *ip_adapters.own_ip_adapters(model)]
    return {"model_list": [ref.title for ref in refs]}


@router.get("/module_list")
def module_list() -> dict[str, Any]:
    names = [*PREPROCESSORS, *ALIASES, *CLIP_MODULES]
    return {"module_list": names, "module_detail": {name: _detail(name) for name in names}}


@router.post("/detect")
async def detect(http: Request, req: DetectRequest) -> dict[str, Any]:
    state = http.app.state.huabu
    return await run_in_threadpool(detect_maps, req, state.catalog.limits, state.settings.controlnet_dir / ANNOTATORS,
                                   state.settings.allow_unsafe_pickle)


def detect_maps(req: DetectRequest, limits, annotators_dir: Path, allow_unsafe_pickle: bool) -> dict[str, Any]:
    """Each input image through the module, as a unit would preprocess it (base64 PNGs, in order)."""
    module = req.controlnet_module
    if is_ip_adapter_module(module):
        raise InvalidRequest(f"module {module!r} makes an image embedding, not a map: nothing to detect")
    name = get_preprocessor(module).name
    if name == GLYPH:
        raise InvalidRequest("the glyph module draws words, not an image: use huabu preprocess glyph --text ...")
    if not req.controlnet_input_images:
        raise InvalidRequest("controlnet_input_images is empty: send at least one base64 image")
    maps = []
    for index, text in enumerate(req.controlnet_input_images):
        image = load_image(image_data_url(text, limits, f"controlnet_input_images[{index}]"),
                           f"controlnet_input_images[{index}]")
        maps.append(png_base64(run_preprocessor(name, image, req.controlnet_processor_res,
                                                _set(req.controlnet_threshold_a), _set(req.controlnet_threshold_b),
                                                annotators_dir, allow_unsafe_pickle,
                                                what=f"controlnet_input_images[{index}]")))
    return {"images": maps, "info": "Success"}


def _set(value: float | None) -> float | None:
    return None if value is None or value < 0 else value  # the extension's -1: not set


def _default_model_path(state) -> Path | None:
    try:
        return state.catalog.models.resolve(state.catalog.current_model).path
    except HuabuError:  # a default model that cannot be found has no ControlNets of its own
        return None


def _detail(name: str) -> dict[str, Any]:
    """The extension's module_detail: whether the module runs without a model, and its sliders."""
    sliders: list[dict[str, Any]] = []
    if not is_ip_adapter_module(name) and "resolution" in get_preprocessor(name).options and name != "none":
        sliders.append({"name": "Preprocessor Resolution", "value": 512, "min": MIN_RESOLUTION,
                        "max": MAX_RESOLUTION})
    if ALIASES.get(name, name) == "canny":
        sliders += [{"name": "Canny Low Threshold", "value": DEFAULT_LOW, "min": 1, "max": 255},
                    {"name": "Canny High Threshold", "value": DEFAULT_HIGH, "min": 1, "max": 255}]
    return {"model_free": False, "sliders": sliders}
