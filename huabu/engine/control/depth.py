"""Depth maps for the depth ControlNet: near = bright, 0..255, RGB.

With a model: any transformers depth estimator (DPT / MiDaS, Depth-Anything, ...) from a local folder or a hub id.
Without one: the user's own depth map image, checked and resized to the target size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from huabu.core.errors import BadImage, InvalidRequest, ModelNotFound, UnsafeCheckpoint, first_line
from huabu.engine.control.images import fit_resolution, gray_to_rgb, rgb_array

# Models that predict metric distance (far = large) rather than relative inverse depth (near = large).
_METRIC_MODEL_TYPES = {"zoedepth"}


@dataclass(frozen=True)
class DepthEstimator:
    """A loaded transformers depth model with its image processor; `far_is_large` for metric-depth models."""

    model: Any
    processor: Any
    far_is_large: bool


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", ".", "~")) or "\\" in ref or ref.count("/") > 1


def load_depth_model(ref: str | os.PathLike, device: str | torch.device = "cpu",
                     local_files_only: bool = False, allow_unsafe_pickle: bool = False) -> DepthEstimator:
    """A depth estimator from a local folder (config.json + weights + preprocessor_config.json) or a hub id;
    pickle weights (.bin) only when `allow_unsafe_pickle`."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    text = os.fspath(ref)
    path = Path(text).expanduser()
    if path.is_file():
        raise ModelNotFound(f"depth weights must be a transformers model folder (config.json, weights and "
                            f"preprocessor_config.json) or a hub id, not a single file: {path}")
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"depth model folder {path} has no config.json (expected a transformers model folder)")
        source, local_files_only = str(path), True
    elif isinstance(ref, Path) or _looks_like_path(text):
        raise ModelNotFound(f"depth model folder not found: {path}")
    else:
        source = text
    try:
        # The PIL backend: transformers' default "fast" processors need torchvision, which huabu avoids.
        processor = AutoImageProcessor.from_pretrained(source, backend="pil", local_files_only=local_files_only)
        model = AutoModelForDepthEstimation.from_pretrained(
            source, local_files_only=local_files_only, use_safetensors=None if allow_unsafe_pickle else True)
    except (OSError, ValueError) as err:
        if path.exists() and not allow_unsafe_pickle and not any(path.glob("*.safetensors")):
            raise UnsafeCheckpoint(f"depth model folder {path} holds no .safetensors weights (only pickle files?); "
                                   f"pass --allow-unsafe-pickle if you trust it") from None
        if path.exists():
            raise ModelNotFound(f"cannot load the depth model in {path}: {first_line(err)}") from None
        raise ModelNotFound(
            f"depth model {text!r} is not available offline: download it first (huggingface-cli download {text}) "
            f"or pass a local model folder") from None
    config = model.config
    far_is_large = (config.model_type in _METRIC_MODEL_TYPES
                    or getattr(config, "depth_estimation_type", None) == "metric")
    return DepthEstimator(model=model.to(device).eval(), processor=processor, far_is_large=far_is_large)


def normalise_depth(depth: np.ndarray, far_is_large: bool = False) -> np.ndarray:
    """Min-max to 0..255 uint8 with near = bright; a constant map becomes all black."""
    depth = depth.astype(np.float64)
    low, high = float(depth.min()), float(depth.max())
    unit = (depth - low) / (high - low) if high - low > 1e-12 else np.zeros_like(depth)
    if far_is_large:
        unit = 1.0 - unit
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


@torch.no_grad()
def estimate_depth(image: Image.Image, weights: str | os.PathLike | DepthEstimator, resolution: int | None = None,
                   device: str | torch.device = "cpu", allow_unsafe_pickle: bool = False) -> Image.Image:
    """Depth of `image` by a transformers model (`weights`: folder, hub id or a loaded DepthEstimator)."""
    array = fit_resolution(rgb_array(image, "depth"), resolution)
    estimator = weights if isinstance(weights, DepthEstimator) else load_depth_model(
        weights, device, allow_unsafe_pickle=allow_unsafe_pickle)
    height, width = array.shape[:2]
    inputs = estimator.processor(images=Image.fromarray(array), return_tensors="pt")
    model_device = next(estimator.model.parameters()).device
    predicted = estimator.model(pixel_values=inputs["pixel_values"].to(model_device)).predicted_depth
    depth = torch.nn.functional.interpolate(predicted[:, None].float(), size=(height, width), mode="bicubic",
                                            align_corners=False)[0, 0]
    return gray_to_rgb(normalise_depth(depth.cpu().numpy(), estimator.far_is_large))


def _depth_map_array(depth_map: str | os.PathLike | Image.Image) -> np.ndarray:
    """A user depth map as (H, W) uint8. Accepts 8-bit gray, 16-bit/float gray (min-max scaled) and RGB whose
    channels agree; a colour-mapped (false colour) depth image cannot be read back and is refused."""
    if not isinstance(depth_map, Image.Image):
        path = Path(depth_map).expanduser()
        if not path.is_file():
            raise BadImage(f"depth map file not found: {path}")
        try:
            with Image.open(path) as opened:
                opened.load()
                depth_map = opened.copy()
        except (OSError, ValueError, Image.DecompressionBombError):
            raise BadImage(f"cannot read depth map {path}: not an image file Pillow can open") from None
    if depth_map.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return normalise_depth(np.asarray(depth_map, dtype=np.float64))
    if depth_map.mode in ("L", "LA"):
        return np.asarray(depth_map.convert("L"))
    if depth_map.mode in ("RGB", "RGBA", "P"):
        rgb = np.asarray(depth_map.convert("RGB")).astype(np.int16)
        if np.abs(rgb - rgb[:, :, :1]).max() > 8:
            raise BadImage("depth map must be grayscale (near = bright); this one is in colour, which a depth "
                           "ControlNet cannot read")
        return rgb.mean(axis=2).round().astype(np.uint8)
    raise BadImage(f"depth map must be a grayscale or RGB image, got Pillow mode {depth_map.mode}")


def depth_from_map(image: Image.Image | None, depth_map: str | os.PathLike | Image.Image, invert: bool = False,
                   resolution: int | None = None) -> Image.Image:
    """The user's depth map, resized to `image`'s size (after `resolution`), as RGB; `invert` for far = bright maps."""
    gray = _depth_map_array(depth_map)
    if image is not None:
        height, width = fit_resolution(rgb_array(image, "depth"), resolution).shape[:2]
    else:
        height, width = fit_resolution(gray, resolution).shape[:2]
    if gray.shape != (height, width):
        shrinking = width * height < gray.shape[0] * gray.shape[1]
        gray = cv2.resize(gray, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    return gray_to_rgb(255 - gray if invert else gray)


def depth(image: Image.Image | None, weights: str | os.PathLike | DepthEstimator | None = None,
          depth_map: str | os.PathLike | Image.Image | None = None, invert: bool = False,
          resolution: int | None = None, device: str | torch.device = "cpu",
          allow_unsafe_pickle: bool = False) -> Image.Image:
    """Depth from a model (`weights`; pickle weights only when `allow_unsafe_pickle`) or from the user's own
    `depth_map`."""
    if weights is not None and depth_map is not None:
        raise InvalidRequest("depth takes either weights (a depth model) or depth_map (your own map), not both")
    if weights is not None:
        if invert:
            raise InvalidRequest("invert applies to a supplied depth_map; model output is already near = bright")
        return estimate_depth(image, weights, resolution=resolution, device=device,
                              allow_unsafe_pickle=allow_unsafe_pickle)
    if depth_map is None:
        raise InvalidRequest("depth needs weights (a transformers depth model folder or hub id, e.g. a DPT or "
                             "Depth-Anything model) or depth_map (your own grayscale depth image, near = bright)")
    return depth_from_map(image, depth_map, invert=invert, resolution=resolution)
