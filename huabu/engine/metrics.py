"""Image measures the engine reports with its results (no learned judge involved)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def _array(frame) -> np.ndarray:
    return np.asarray(frame.convert("RGB") if isinstance(frame, Image.Image) else frame)


def first_frame_fidelity(image: Image.Image | np.ndarray, frame: Image.Image | np.ndarray) -> dict[str, float]:
    """How close a video's first frame is to the image it animates: PSNR in dB (inf when identical) and the mean
    absolute pixel difference (0-255). The image is resized to the frame's size first."""
    target = _array(frame).astype(np.float64)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    source = image.convert("RGB")
    if source.size != (target.shape[1], target.shape[0]):
        source = source.resize((target.shape[1], target.shape[0]), Image.LANCZOS)
    diff = np.asarray(source, dtype=np.float64) - target
    mse = float((diff**2).mean())
    psnr = math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)
    return {"psnr": psnr, "mean_abs_diff": float(np.abs(diff).mean())}
