"""The subject of an image from a point, a box or a mask: OpenCV's GrabCut (no weights), or SAM (transformers'
SamModel) from a local folder when one is given."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from huabu.core.errors import InvalidRequest, ModelNotFound, first_line
from huabu.engine import checkpoints

GRABCUT_ITERATIONS = 5
SEED_RADIUS = 2  # pixels around a clicked point taken as surely the subject


def subject_mask(image: Image.Image, point: list[int] | None = None, box: list[int] | None = None,
                 sam: Path | None = None) -> np.ndarray:
    """Booleans, True on the subject at `point` (X,Y) or inside `box` (X0,Y0,X1,Y1)."""
    width, height = image.size
    if point is not None and not (0 <= point[0] < width and 0 <= point[1] < height):
        raise InvalidRequest(f"point {point[0]},{point[1]} lies outside the {width}x{height} image")
    found = sam_mask(image, point, box, sam) if sam is not None else grabcut_mask(image, point, box)
    if point is not None:
        found = component_at(found, point)
    if not found.any():
        raise InvalidRequest("no subject found there; click on it (--point) or draw a box around it (--box)")
    return found


def grabcut_mask(image: Image.Image, point: list[int] | None, box: list[int] | None) -> np.ndarray:
    import cv2

    pixels = np.ascontiguousarray(np.asarray(image.convert("RGB"))[..., ::-1])
    height, width = pixels.shape[:2]
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut's GMMs start from k-means on OpenCV's global RNG: the same mask every run
    if box is not None:
        x0, y0 = max(0, box[0]), max(0, box[1])
        x1, y1 = min(width, box[2]), min(height, box[3])
        if x1 - x0 < 2 or y1 - y0 < 2:
            raise InvalidRequest(f"box {','.join(map(str, box))} is too small or outside the {width}x{height} image")
        labels = np.zeros((height, width), np.uint8)
        cv2.grabCut(pixels, labels, (x0, y0, x1 - x0, y1 - y0), background, foreground, GRABCUT_ITERATIONS,
                    cv2.GC_INIT_WITH_RECT)
    else:
        # A click: the image's edge is surely background, a small disc at the click surely subject, the rest
        # probably subject, so that GrabCut's two colour models start apart and the cut settles between them.
        labels = np.full((height, width), cv2.GC_PR_FGD, np.uint8)
        ring = max(1, min(width, height) // 32)
        labels[:ring], labels[-ring:], labels[:, :ring], labels[:, -ring:] = (cv2.GC_BGD,) * 4
        cv2.circle(labels, (int(point[0]), int(point[1])), SEED_RADIUS, int(cv2.GC_FGD), -1)
        cv2.grabCut(pixels, labels, None, background, foreground, GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_MASK)
    return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)


def component_at(mask: np.ndarray, point: list[int]) -> np.ndarray:
    """The connected part of `mask` holding `point` (the nearest part when the click missed by a little)."""
    import cv2

    count, parts = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return mask
    label = parts[point[1], point[0]]
    if label == 0:
        ys, xs = np.nonzero(parts)
        nearest = np.argmin((xs - point[0]) ** 2 + (ys - point[1]) ** 2)
        label = parts[ys[nearest], xs[nearest]]
    return parts == label


def sam_mask(image: Image.Image, point: list[int] | None, box: list[int] | None, folder: Path) -> np.ndarray:
    """SAM's best mask (by its own IoU estimate) for the point or box prompt."""
    import torch

    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ModelNotFound(f"no SAM model in {folder}: put a transformers SamModel folder there (config.json, "
                            f"model.safetensors, preprocessor_config.json), e.g. facebook/sam-vit-base")
    stat = weights.stat()
    processor, model = load_sam(str(folder.resolve()), stat.st_size, stat.st_mtime_ns)
    prompt = {"input_points": [[[list(map(float, point))]]]} if point is not None else \
        {"input_boxes": [[list(map(float, box))]]}
    inputs = processor(images=image.convert("RGB"), return_tensors="pt", **prompt)
    with torch.no_grad():
        outputs = model(**inputs, multimask_output=True)
    masks = processor.image_processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"],
                                                         inputs["reshaped_input_sizes"])[0][0]
    best = int(outputs.iou_scores[0, 0].argmax())
    return masks[best].numpy().astype(bool)


@lru_cache(maxsize=1)  # the last SAM stays loaded (keyed by its weights' size and time: a replaced file reloads)
def load_sam(folder: str, size: int, mtime_ns: int) -> tuple[Any, Any]:
    from transformers import SamModel, SamProcessor

    checkpoints.check_safetensors(Path(folder) / "model.safetensors", f"SAM {folder}/model.safetensors")
    try:
        processor = SamProcessor.from_pretrained(folder, local_files_only=True)
        model = SamModel.from_pretrained(folder, local_files_only=True, use_safetensors=True).eval()
    except (OSError, ValueError) as err:
        raise ModelNotFound(f"cannot load SAM from {folder}: {first_line(err)}") from None
    return processor, model
