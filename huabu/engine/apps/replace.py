"""ReplaceAnything: keep a subject (or the background) exactly and repaint the rest from the prompt.

The subject comes from a point, a box (GrabCut or SAM) or a mask. The engine inpaints everything else with no mask
blur, and its overlay pastes the input back outside the repainted area, so the kept part is the input's pixels.
The repainted area reaches one pixel into the kept part: the subject's anti-aliased edge (half old background)
is repainted with the new one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from huabu.core.apps import AppRequest, app_infotext_fields
from huabu.core.requests import GenerateRequest
from huabu.engine.apps.common import AppTag, data_url, erode, mask_image, read_image, read_mask, snapped
from huabu.engine.apps.segment import subject_mask

EDGE = 1  # pixels of the kept part's edge that are repainted with the rest


def replace_plan(request: AppRequest, sam: Path | None) -> tuple[GenerateRequest, AppTag, np.ndarray]:
    """The inpaint request, the infotext fields and the kept pixels (True = kept as is) of a replace run."""
    original, image_hash = read_image(request.image, "image")
    image = snapped(original)
    hashes = {"image": image_hash}
    if request.mask is not None:
        subject, hashes["mask"] = read_mask(request.mask, image.size)
    else:
        subject = subject_mask(image, request.point, request.box, sam)
    kept = subject if request.keep == "subject" else ~subject
    repaint = ~erode(kept, EDGE)
    generate = GenerateRequest.create(
        mode="inpaint", init_image=data_url(image), mask=data_url(mask_image(repaint)), prompt=request.prompt,
        negative_prompt=request.negative_prompt, styles=request.styles, steps=request.steps,
        cfg_scale=request.cfg_scale, sampler=request.sampler, schedule_type=request.schedule_type, seed=request.seed,
        model=request.model, width=image.width, height=image.height, mask_blur=0,
        denoising_strength=request.denoising_strength)
    return generate, AppTag(app_infotext_fields(request, hashes)), ~repaint
