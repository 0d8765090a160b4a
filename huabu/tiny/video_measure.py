"""Measures for generated videos of moving scenes: motion direction and frame consistency.

Moving scenes are flat colour plus one glyph, so each frame's object is read exactly with huabu-tiny's scene
helpers (background = median border colour, object = the pixels far from it); the direction is the trajectory of
the object's centroid and size from the first frames to the last ones. No learned judge is involved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from huabu.tiny import measure as tiny_measure
from huabu.tiny import scenes as S

MOTIONS = ("left", "right", "up", "down", "grow", "shrink")
STATIC = "static"
# Below both thresholds nothing moved: centroid travel as a fraction of the frame width, and |log| of the
# object's linear size ratio (0.2 = 22% bigger or smaller).
MOVE_THRESHOLD = 0.08
SCALE_THRESHOLD = 0.2


def _array(frame) -> np.ndarray:
    return np.asarray(frame.convert("RGB") if isinstance(frame, Image.Image) else frame)


def _background_rgb(frames: list[np.ndarray], background) -> np.ndarray:
    """The named colour, an RGB triple, or (None) the median border colour over all frames."""
    if isinstance(background, str):
        return np.asarray(S.COLOURS[background], np.float32)
    if background is not None:
        return np.asarray(background, np.float32)
    border = 2
    rings = [np.concatenate([f[:border].reshape(-1, 3), f[-border:].reshape(-1, 3), f[:, :border].reshape(-1, 3),
                             f[:, -border:].reshape(-1, 3)]) for f in frames]
    return np.median(np.concatenate(rings).astype(np.float32), axis=0)


def object_track(frames: Sequence, background=None) -> list[tuple[float, float, float] | None]:
    """(centroid x, centroid y, pixel count) of the object in each frame; None where nothing stands out."""
    arrays = [_array(f) for f in frames]
    bg = _background_rgb(arrays, background)
    track = []
    for frame in arrays:
        mask = tiny_measure.object_mask(frame, bg)
        xy = tiny_measure.centroid(mask)
        track.append(None if xy is None else (xy[0], xy[1], float(mask.sum())))
    return track


def motion_direction(frames: Sequence, background=None) -> str:
    """left / right / up / down / grow / shrink / static: how the object changes from the first quarter of the
    frames to the last quarter (centroid travel against size change, each over its threshold)."""
    track = object_track(frames, background)
    quarter = max(1, len(track) // 4)
    start = [t for t in track[:quarter] if t is not None]
    end = [t for t in track[-quarter:] if t is not None]
    if not start or not end:
        return STATIC
    x0, y0, a0 = np.mean(start, axis=0)
    x1, y1, a1 = np.mean(end, axis=0)
    width = _array(frames[0]).shape[1]
    dx, dy = x1 - x0, y1 - y0
    travel = math.hypot(dx, dy) / (MOVE_THRESHOLD * width)
    scale = abs(0.5 * math.log(max(a1, 1.0) / max(a0, 1.0))) / SCALE_THRESHOLD
    if travel < 1 and scale < 1:
        return STATIC
    if scale > travel:
        return "grow" if a1 > a0 else "shrink"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"  # image rows grow downwards


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean structural similarity of two grey images (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5).
    Hand-written: OpenCV's headless wheel has no SSIM and scikit-image is not a dependency."""
    import cv2

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim.mean())


def frame_consistency(frames: Sequence) -> float:
    """Mean SSIM between consecutive frames (1 = identical frames; about 0 for unrelated noise)."""
    if len(frames) < 2:
        raise ValueError("frame consistency needs at least two frames")
    grey = [_array(f).astype(np.float64) @ np.array([0.299, 0.587, 0.114]) for f in frames]
    return float(np.mean([_ssim(a, b) for a, b in zip(grey, grey[1:])]))


def score_motion(videos: Sequence[Sequence], motions: Sequence[str], backgrounds: Sequence | None = None
                 ) -> dict[str, object]:
    """Direction accuracy (overall and per asked motion) and mean frame consistency of generated videos, each
    scored against the motion its prompt asked for; `backgrounds` (colour names) help when a frame's border is busy."""
    backgrounds = list(backgrounds) if backgrounds is not None else [None] * len(videos)
    hits: dict[str, list[bool]] = {}
    for frames, motion, background in zip(videos, motions, backgrounds):
        hits.setdefault(motion, []).append(motion_direction(frames, background) == motion)
    every = [hit for results in hits.values() for hit in results]
    return {
        "direction_accuracy": sum(every) / max(1, len(every)),
        "per_motion": {motion: sum(results) / len(results) for motion, results in hits.items()},
        "frame_consistency": float(np.mean([frame_consistency(frames) for frames in videos])) if videos else 0.0,
    }
