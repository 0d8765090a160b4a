"""A1111's Extras over HTTP: /sdapi/v1/extra-single-image and /extra-batch-images (upscaling with the built-in
upscalers, a second one blended in). Face restoration there is named as not available in `html_info`."""

from __future__ import annotations

from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict

from huabu.core.errors import InvalidRequest
from huabu.engine.images import load_image
from huabu.engine.upscalers import Upscalers, target_size, upscale
from huabu.server.runner import png_base64
from huabu.server.security import image_data_url


class ExtrasOptions(BaseModel):
    """A1111 1.10's ExtrasBaseRequest (defaults as A1111's)."""

    model_config = ConfigDict(extra="allow")

    resize_mode: int = 0  # 0: upscaling_resize times; 1: to upscaling_resize_w x upscaling_resize_h
    show_extras_results: bool = True
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str | None = "None"
    upscaler_2: str | None = "None"
    extras_upscaler_2_visibility: float = 0.0
    upscale_first: bool = False


class ExtrasSingleRequest(ExtrasOptions):
    image: str = ""


class ExtrasBatchRequest(ExtrasOptions):
    imageList: list[dict[str, Any]] = []  # noqa: N815 (A1111's name)


def extras_images(options: ExtrasOptions, images: list[str], limits, upscalers: Upscalers) -> tuple[list[str], str]:
    """(base64 PNGs, html_info) for base64 inputs, each checked like any request image."""
    if options.resize_mode == 0 and not 0 < options.upscaling_resize <= 8:
        raise InvalidRequest(f"upscaling_resize must be above 0 and at most 8 (got {options.upscaling_resize})")
    results = []
    for index, text in enumerate(images):
        image = load_image(image_data_url(text, limits, f"image {index}"), f"image {index}")
        size = target_size(image, options.upscaling_resize,
                           (options.upscaling_resize_w, options.upscaling_resize_h) if options.resize_mode == 1
                           else None)
        if size[0] > limits.max_width or size[1] > limits.max_height:
            raise InvalidRequest(f"the upscaled image would be {size[0]}x{size[1]}; this server's limit is "
                                 f"{limits.max_width}x{limits.max_height}")
        result = upscale(image, size, options.upscaler_1 or "None", upscalers, options.upscaler_2 or "None",
                         options.extras_upscaler_2_visibility, options.upscaling_crop)
        results.append(png_base64(result, _parameters(image)))
    notes = []
    if options.gfpgan_visibility > 0 or options.codeformer_visibility > 0:
        notes.append("face restoration: not available (no GFPGAN / CodeFormer weights can be loaded)")
    return results, "".join(f"<p>{note}</p>" for note in notes)


def _parameters(image: Image.Image) -> str | None:
    return image.info.get("parameters")


def batch_images(request: ExtrasBatchRequest) -> list[str]:
    images = [item.get("data") for item in request.imageList if isinstance(item, dict)]
    if not images or len(images) != len(request.imageList):
        raise InvalidRequest("imageList must be a list of {\"data\": base64 image, \"name\": ...} objects")
    return images
