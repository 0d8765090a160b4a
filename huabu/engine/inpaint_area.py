"""A1111's inpainting options that diffusers lacks: "only masked" (crop around the mask, inpaint the crop at the
generation size, paste it back), the masked content to start from (fill, original, latent noise, latent
nothing) and outpainting's grown canvas. Written here because diffusers' inpaint pipelines always work on the
whole picture and always start from the original under the mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFilter, ImageOps

FILL, ORIGINAL, LATENT_NOISE, LATENT_NOTHING = range(4)  # A1111's inpainting_fill (core.fields.FILL_NAMES)


def mask_box(mask: Image.Image, padding: int) -> tuple[int, int, int, int]:
    """The rectangle (x1, y1, x2, y2) holding every non-black mask pixel, grown by `padding` within the image."""
    rows, cols = np.nonzero(np.asarray(mask.convert("L")))
    if rows.size == 0:
        return 0, 0, mask.width, mask.height
    return (max(int(cols.min()) - padding, 0), max(int(rows.min()) - padding, 0),
            min(int(cols.max()) + 1 + padding, mask.width), min(int(rows.max()) + 1 + padding, mask.height))


def fit_box(box: tuple[int, int, int, int], width: int, height: int, image_w: int,
            image_h: int) -> tuple[int, int, int, int]:
    """`box` grown along one side to the generation size's aspect, shifted to stay inside the image (A1111's
    expand_crop_region)."""
    x1, y1, x2, y2 = box
    if (x2 - x1) / (y2 - y1) > width / height:
        y1, y2 = _grow(y1, y2, int((x2 - x1) * height / width - (y2 - y1)), image_h)
    else:
        x1, x2 = _grow(x1, x2, int((y2 - y1) * width / height - (x2 - x1)), image_w)
    return x1, y1, x2, y2


def _grow(start: int, end: int, extra: int, limit: int) -> tuple[int, int]:
    start, end = start - extra // 2, end + extra - extra // 2
    if end > limit:
        start, end = start - (end - limit), limit
    if start < 0:
        start, end = 0, min(end - start, limit)
    return start, end


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill": the masked area painted with the surrounding colours, spread by ever finer blurs of the
    unmasked pixels (premultiplied by their alpha, so the masked area's own colours never leak in)."""
    keep = ImageOps.invert(mask.convert("L"))
    known = image.convert("RGBA")
    known.putalpha(keep)
    known = known.convert("RGBa")
    result = Image.new("RGBA", image.size)
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = known.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            result.alpha_composite(blurred)
    return result.convert("RGB")


@dataclass(frozen=True)
class MaskedArea:
    """Where an "only masked" crop came from: the whole image, its mask and the crop box."""

    image: Image.Image
    mask: Image.Image
    box: tuple[int, int, int, int]

    @classmethod
    def crop(cls, image: Image.Image, mask: Image.Image, padding: int,
             size: tuple[int, int]) -> tuple[MaskedArea, Image.Image, Image.Image]:
        """(the area, the image crop and the mask crop, both resized to the generation `size`)."""
        box = fit_box(mask_box(mask, padding), size[0], size[1], image.width, image.height)
        crop = image.crop(box).resize(size, Image.LANCZOS)
        return cls(image, mask, box), crop, mask.crop(box).resize(size, Image.LANCZOS)

    def paste(self, result: Image.Image, blur: int) -> Image.Image:
        """The whole image with `result` (an inpainted crop) put back in its box, blended in through the
        (blurred) mask, so that pixels outside the mask stay the input's."""
        x1, y1, x2, y2 = self.box
        whole = self.image.convert("RGB").copy()
        whole.paste(result.resize((x2 - x1, y2 - y1), Image.LANCZOS), (x1, y1))
        soft = self.mask.convert("L")
        if blur > 0:
            soft = soft.filter(ImageFilter.GaussianBlur(blur))
        return Image.composite(whole, self.image.convert("RGB"), soft)


def latent_mask(mask: Image.Image, latent_size: tuple[int, int]) -> np.ndarray:
    """The mask at latent resolution, rounded to 0/1 as A1111 does for its latent fills."""
    small = np.asarray(mask.convert("L").resize(latent_size), dtype=np.float32) / 255.0
    return np.around(small)


def use_latent_fill(scheduler: Any, mask: np.ndarray, fill: int, noise: Any) -> None:
    """Start the masked latents from `noise` (latent noise) or from zeros (latent nothing) rather than from the
    original's: diffusers encodes the input itself, and scheduler.add_noise is where its latents enter the run
    (in the 4-channel inpaint loop too, where only the unmasked part of what it returns is used)."""
    import torch

    original = scheduler.add_noise

    def add_noise(samples, drawn, timesteps):
        where = torch.as_tensor(mask, device=samples.device, dtype=samples.dtype)
        replacement = noise.to(samples.device, samples.dtype) if fill == LATENT_NOISE else torch.zeros_like(samples)
        return original(samples * (1 - where) + replacement * where, drawn, timesteps)

    scheduler.add_noise = add_noise


def outpaint_canvas(image: Image.Image, sides: tuple[int, int, int, int]) -> tuple[Image.Image, Image.Image]:
    """(the image on a canvas grown by (left, right, up, down) pixels, the mask of the new border). The border
    starts as the image's edge pixels stretched outwards, as A1111's outpainting scripts do, so that even
    "original" content continues the picture."""
    left, right, up, down = sides
    width, height = image.width + left + right, image.height + up + down
    rgb = np.asarray(image.convert("RGB"))
    canvas = np.pad(rgb, ((up, down), (left, right), (0, 0)), mode="edge")
    mask = Image.new("L", (width, height), 255)
    mask.paste(0, (left, up, left + image.width, up + image.height))
    return Image.fromarray(canvas), mask


def keep_outside(mask: Image.Image, blur: int) -> Image.Image:
    """The blurred mask, cut back to zero wherever the hard mask is: the seam softens on the painted side only,
    so every kept pixel stays the input's (outpainting)."""
    soft = mask.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else mask
    return Image.fromarray(np.minimum(np.asarray(soft), np.asarray(mask.convert("L"))))
