"""Try-on (OutfitAnyone's idea as reference-based inpainting): the item's image steers an IP-Adapter while the
region of the target is inpainted, optionally with a ControlNet (Canny of the target) holding the region's shape.
Outside the region the engine's overlay (no mask blur) returns the target's own pixels."""

from __future__ import annotations

import numpy as np

from huabu.core.apps import AppRequest, app_infotext_fields
from huabu.core.requests import GenerateRequest
from huabu.engine.apps.common import AppTag, box_mask, data_url, mask_image, pixel_hash, read_image, read_mask, snapped
from huabu.engine.images import load_image


def try_on_plan(request: AppRequest) -> tuple[GenerateRequest, AppTag, np.ndarray]:
    """The inpaint request, the infotext fields and the region (True = repainted) of a try-on run."""
    original, image_hash = read_image(request.image, "image")
    image = snapped(original)
    hashes = {"image": image_hash, "reference": pixel_hash(load_image(request.reference, "reference"))}
    if request.mask is not None:
        region, hashes["mask"] = read_mask(request.mask, image.size)
    else:
        region = box_mask(image.size, request.box)
    controlnets = []
    if request.controlnet:
        controlnets.append({"module": "canny", "model": request.controlnet, "image": data_url(image)})
    generate = GenerateRequest.create(
        mode="inpaint", init_image=data_url(image), mask=data_url(mask_image(region)), prompt=request.prompt,
        negative_prompt=request.negative_prompt, styles=request.styles, steps=request.steps,
        cfg_scale=request.cfg_scale, sampler=request.sampler, schedule_type=request.schedule_type, seed=request.seed,
        model=request.model, width=image.width, height=image.height, mask_blur=0,
        denoising_strength=request.denoising_strength, controlnets=controlnets,
        ip_adapters=[{"image": request.reference, "weight": request.ip_adapter_weight,
                      "model": request.ip_adapter_model}])
    fields = app_infotext_fields(request, hashes, control="canny" if controlnets else None)
    return generate, AppTag(fields), region
