"""T2I-Adapter-style colour conditioning: a coarse grid of block colours, or a heavy blur.

T2I-Adapter shrinks a 512px image 64x and scales it back with nearest neighbour. We keep that cell size as a
fraction of the image (1/8 of the short side) so a 64x64 huabu-tiny image still gets an 8x8 grid, and shrink with
area averaging so each cell is exactly the mean colour of its block (cubic shrinking, as the original does, just
samples a few pixels when the factor is large).
"""

from __future__ import annotations

import numbers

import cv2
from PIL import Image

from huabu.core.errors import InvalidRequest
from huabu.engine.control.images import fit_resolution, rgb_array

CELLS_PER_SIDE = 8
MODES = ("grid", "blur")


def default_cell(width: int, height: int) -> int:
    return max(1, round(min(width, height) / CELLS_PER_SIDE))


def _check_cell(cell: object) -> int | None:
    if cell is None:
        return None
    if isinstance(cell, bool) or not isinstance(cell, numbers.Integral) or cell < 1:
        raise InvalidRequest(f"colour cell size must be a positive whole number of pixels, got {cell!r}")
    return int(cell)


def color(image: Image.Image, cell: int | None = None, mode: str = "grid",
          resolution: int | None = None) -> Image.Image:
    """Colour map of `image`: "grid" = piecewise-constant cells of `cell` px (default 1/8 of the short side) holding
    their block's mean colour; "blur" = a Gaussian blur of about the same reach."""
    cell = _check_cell(cell)
    if mode not in MODES:
        raise InvalidRequest(f"colour mode must be one of {', '.join(MODES)}, got {mode!r}")
    array = fit_resolution(rgb_array(image, "color"), resolution)
    height, width = array.shape[:2]
    cell = cell or default_cell(width, height)
    if mode == "blur":
        blurred = cv2.GaussianBlur(array, (0, 0), sigmaX=cell / 2, borderType=cv2.BORDER_REFLECT)
        return Image.fromarray(blurred, mode="RGB")
    grid = (max(1, round(width / cell)), max(1, round(height / cell)))
    small = cv2.resize(array, grid, interpolation=cv2.INTER_AREA)
    return Image.fromarray(cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST), mode="RGB")
