"""Mode pipelines (txt2img / img2img / inpaint) made from one loaded model with `from_pipe`, and VAE decoding.

`from_pipe` builds the other pipeline classes around the very same UNet, VAE and text encoders, so switching
modes costs no loading and no memory. A 9-channel inpainting UNet only runs in the inpaint pipeline; the engine
feeds it a full mask for txt2img/img2img, as A1111 does.
"""

from __future__ import annotations

import logging
from typing import Any

from huabu.core.errors import InvalidRequest
from huabu.engine.models import LoadedModel, PipelineKey

log = logging.getLogger(__name__)

MODES = ("txt2img", "img2img", "inpaint")


def pipeline_mode(model: LoadedModel, mode: str) -> str:
    """The pipeline that serves `mode` on this model: the inpaint one for every mode of a 9-channel UNet."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    return "inpaint" if model.is_inpaint_unet else mode


def mode_pipeline(model: LoadedModel, mode: str) -> Any:
    """The cached pipeline for `mode`, sharing every component with `model.pipeline`."""
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image

    key = PipelineKey(pipeline_mode(model, mode))
    pipe = model.pipelines.get(key)
    if pipe is None:
        auto = {"txt2img": AutoPipelineForText2Image, "img2img": AutoPipelineForImage2Image,
                "inpaint": AutoPipelineForInpainting}[key.kind]
        try:
            # dtype: from_pipe casts to float32 unless told otherwise, which would cast the shared modules in place.
            pipe = auto.from_pipe(model.pipeline, dtype=model.pipeline.dtype)
        except ValueError:  # diffusers has no pipeline of this kind for the model's class
            if key.kind != "txt2img":
                raise InvalidRequest(f"{key.kind} is not available for {type(model.pipeline).__name__} models "
                                     f"(diffusers has no {key.kind} pipeline for them); use txt2img") from None
            pipe = model.pipeline  # a txt2img pipeline AutoPipeline does not list: the loaded one itself
        pipe.set_progress_bar_config(disable=True)
        model.pipelines[key] = pipe
    return pipe


def decode_latents(pipe: Any, latents, force_fp32: bool = False) -> tuple[list, bool]:
    """Latents -> (PIL images, whether float32 was needed).

    A half-precision VAE whose decode overflows to NaN/inf (SD VAEs do in fp16) decodes again in float32, like
    A1111's automatic VAE upcast; callers pass `force_fp32` afterwards to skip the failing try. The VAE is cast
    back to its dtype after each float32 decode, because the pipelines encode init images in the model's dtype.
    """
    import torch

    vae = pipe.vae
    scaled = _unscale(vae, latents)
    low_precision = vae.dtype in (torch.float16, torch.bfloat16)
    upcast = low_precision and (force_fp32 or bool(getattr(vae.config, "force_upcast", False)))
    with torch.no_grad():
        image = None if upcast else vae.decode(scaled.to(vae.dtype), return_dict=False)[0]
        if image is not None and low_precision and not torch.isfinite(image).all():
            log.warning("the %s VAE decode gave NaN/inf; decoding again in float32", vae.dtype)
            upcast = True
        if upcast:
            dtype = vae.dtype
            vae.to(torch.float32)
            try:
                image = vae.decode(scaled.to(torch.float32), return_dict=False)[0]
            finally:
                vae.to(dtype)
    return pipe.image_processor.postprocess(image, output_type="pil"), upcast


def _unscale(vae: Any, latents):
    """Undo the latent normalisation the pipelines apply before the UNet (scaling factor; mean/std when set)."""
    import torch

    config = vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        return latents * std / config.scaling_factor + mean
    shift = getattr(config, "shift_factor", None) or 0.0
    return latents / config.scaling_factor + shift
