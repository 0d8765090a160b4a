"""How faithfully an output follows its control map: edge F1 for edge controls, colour-map error for colour grids.

    edge_f1(control_edges, edges_of(output))      1.0 = every edge matched within `tolerance` pixels
    output_edge_f1(control_edges, output)         the same, with the output's Canny edges taken here
    colour_map_error(control_grid, output)        mean absolute difference of the colour grids, 0.0 = identical

Edge matching with a pixel tolerance is the usual boundary F-measure (as in BSDS edge benchmarks), done here with a
dilation instead of a bipartite matching: a predicted edge pixel counts as correct when a reference edge lies within
`tolerance` pixels (Chebyshev distance), and the other way round for recall.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from huabu.core.errors import InvalidRequest
from huabu.engine.control.canny import DEFAULT_HIGH, DEFAULT_LOW, canny
from huabu.engine.control.color import color
from huabu.engine.control.images import rgb_array


def edge_mask(image: Image.Image | np.ndarray) -> np.ndarray:
    """A boolean edge mask from an edge map (white edges on black; any channel count)."""
    array = np.asarray(image)
    if array.ndim == 3:
        array = array.max(axis=2)
    if array.ndim != 2 or array.size == 0:
        raise InvalidRequest(f"an edge map must be a non-empty 2-D image, got shape {array.shape}")
    return array > 127


def _same_size(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[:2] != b.shape[:2]:
        raise InvalidRequest(f"the maps differ in size ({a.shape[1]}x{a.shape[0]} vs {b.shape[1]}x{b.shape[0]}); "
                             f"resize one to the other first")


def edge_f1(reference: Image.Image | np.ndarray, predicted: Image.Image | np.ndarray, tolerance: int = 1) -> float:
    """F1 of `predicted` edges against `reference` edges, matching within `tolerance` pixels. Both empty = 1.0."""
    if tolerance < 0:
        raise InvalidRequest(f"tolerance must be at least 0 pixels, got {tolerance}")
    ref, pred = edge_mask(reference), edge_mask(predicted)
    _same_size(ref, pred)
    if not ref.any() and not pred.any():
        return 1.0
    if not ref.any() or not pred.any():
        return 0.0
    kernel = np.ones((2 * tolerance + 1, 2 * tolerance + 1), dtype=np.uint8)
    near_ref = cv2.dilate(ref.astype(np.uint8), kernel).astype(bool)
    near_pred = cv2.dilate(pred.astype(np.uint8), kernel).astype(bool)
    precision = float((pred & near_ref).sum() / pred.sum())
    recall = float((ref & near_pred).sum() / ref.sum())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def edges_of(image: Image.Image, low: float = DEFAULT_LOW, high: float = DEFAULT_HIGH) -> Image.Image:
    """The Canny edges of a generated image, as the canny preprocessor makes them."""
    return canny(image, low=low, high=high)


def output_edge_f1(control_edges: Image.Image, output: Image.Image, tolerance: int = 1, low: float = DEFAULT_LOW,
                   high: float = DEFAULT_HIGH) -> float:
    """Edge F1 between a control edge map and the Canny edges of the output made from it (same size)."""
    return edge_f1(control_edges, edges_of(output, low, high), tolerance)


def colour_map_error(control_grid: Image.Image, output: Image.Image, cell: int | None = None) -> float:
    """Mean absolute difference, in [0, 1] of the 0..255 range, between a control colour grid and the colour grid
    of the output (same preprocessor and cell size; the default cell is the preprocessor's, 1/8 of the short side)."""
    control = rgb_array(control_grid, "colour map error")
    made = rgb_array(output, "colour map error")
    _same_size(control, made)
    grid = rgb_array(color(output, cell=cell), "colour map error")
    return float(np.abs(control.astype(np.int16) - grid.astype(np.int16)).mean() / 255.0)
