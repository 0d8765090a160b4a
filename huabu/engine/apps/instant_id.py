"""InstantID's idea, zero-shot: one reference image steers an IP-Adapter while the prompt sets the scene, and a
pose (else Canny) ControlNet made from the reference holds its layout when one is installed.

FaceID IP-Adapters take an insightface face embedding instead of a CLIP image embedding; huabu does not run
insightface, so when FaceID weights are in the IP-Adapter folder they are named in a warning and the CLIP one is
used (README: Applications)."""

from __future__ import annotations

import logging

from huabu.core.apps import AppRequest, app_infotext_fields
from huabu.core.errors import InvalidRequest
from huabu.core.requests import GenerateRequest
from huabu.engine.apps.common import AppTag, pixel_hash
from huabu.engine.controlnets import ControlNetManager, ControlNetRef
from huabu.engine.images import load_image
from huabu.engine.ip_adapters import IPAdapterManager

log = logging.getLogger(__name__)

OFF = "none"  # controlnet value that turns the ControlNet off
POSE_WORDS, CANNY_WORDS = ("openpose", "pose", "keypoint"), ("canny",)


def pick_controlnet(refs: list[ControlNetRef], wanted: str | None) -> tuple[str, str] | None:
    """(preprocessor module, ControlNet name) for the reference's layout: the one asked for, else an installed pose
    ControlNet, else a Canny one; None when off or none is installed."""
    if wanted is not None and wanted.strip().lower() == OFF:
        return None
    if wanted:
        lowered = wanted.lower()
        return ("openpose" if any(word in lowered for word in POSE_WORDS) else "canny"), wanted
    for words, module in ((POSE_WORDS, "openpose"), (CANNY_WORDS, "canny")):
        for ref in refs:
            if any(word in ref.name.lower() for word in words):
                return module, ref.location
    return None


def pick_ip_adapter(manager: IPAdapterManager, wanted: str) -> str:
    """The IP-Adapter to use: the one asked for, else the folder's only CLIP-embedding one (FaceID ones set aside
    with a warning)."""
    if wanted:
        return wanted
    refs = manager.list_ip_adapters()
    face = [ref for ref in refs if "faceid" in ref.name.lower().replace("-", "").replace("_", "")]
    clip = [ref for ref in refs if ref not in face]
    if face:
        log.warning("IP-Adapter FaceID weights found (%s), but their face embedding needs insightface, which huabu "
                    "does not run; using the CLIP image embedding", ", ".join(ref.name for ref in face))
    if len(clip) > 1:
        raise InvalidRequest(f"several IP-Adapters in {manager.root} ({', '.join(r.name for r in clip)}); name one "
                             f"(--ip-adapter-model)")
    return str(clip[0].path) if clip else ""


def instant_id_plan(request: AppRequest, ip_adapters: IPAdapterManager, controlnets: ControlNetManager,
                    own_controlnets: list[ControlNetRef]) -> tuple[GenerateRequest, AppTag]:
    """The txt2img request (IP-Adapter from the reference, the layout ControlNet) and the infotext fields."""
    reference = load_image(request.reference, "reference")
    control = pick_controlnet(controlnets.list_controlnets() + own_controlnets, request.controlnet)
    units = [{"module": control[0], "model": control[1], "image": request.reference}] if control else []
    generate = GenerateRequest.create(
        prompt=request.prompt, negative_prompt=request.negative_prompt, styles=request.styles, steps=request.steps,
        cfg_scale=request.cfg_scale, sampler=request.sampler, schedule_type=request.schedule_type, seed=request.seed,
        model=request.model, width=request.width, height=request.height, controlnets=units,
        ip_adapters=[{"image": request.reference, "weight": request.ip_adapter_weight,
                      "model": pick_ip_adapter(ip_adapters, request.ip_adapter_model)}])
    fields = app_infotext_fields(request, {"reference": pixel_hash(reference)},
                                 control=control[0] if control else OFF)
    return generate, AppTag(fields)
