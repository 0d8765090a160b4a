"""Control fidelity measures: edge F1 with a pixel tolerance, colour-map error."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from huabu.core.errors import InvalidRequest
from huabu.engine.control.fidelity import colour_map_error, edge_f1, output_edge_f1


def square_edges(offset: int = 0, size: int = 64) -> np.ndarray:
    edges = np.zeros((size, size), dtype=np.uint8)
    edges[10 + offset, 10:40] = edges[40 + offset, 10:40] = 255
    edges[10 + offset:41 + offset, 10] = edges[10 + offset:41 + offset, 40] = 255
    return edges


def test_edge_f1_is_one_for_identical_maps_and_tolerates_small_shifts():
    edges = square_edges()
    assert edge_f1(edges, edges) == 1.0
    assert edge_f1(Image.fromarray(edges).convert("RGB"), edges) == 1.0  # RGB maps as the preprocessors write them
    shifted = square_edges(offset=1)
    assert edge_f1(edges, shifted, tolerance=1) == 1.0
    assert edge_f1(edges, shifted, tolerance=0) < 0.6  # only the vertical sides still overlap
    assert edge_f1(edges, square_edges(offset=12), tolerance=1) < 0.5
    assert edge_f1(np.zeros((8, 8)), np.zeros((8, 8))) == 1.0 and edge_f1(edges, np.zeros_like(edges)) == 0.0


def test_edge_f1_counts_missing_and_extra_edges():
    edges = square_edges()
    half = edges.copy()
    half[:, 25:] = 0  # recall drops: half the square is missing
    extra = edges.copy()
    extra[55, :] = 255  # precision drops: a line that is not in the control
    assert 0.5 < edge_f1(edges, half) < 1.0 and 0.5 < edge_f1(edges, extra) < 1.0


def test_output_edge_f1_takes_the_outputs_canny_edges():
    from huabu.engine.control.canny import canny

    picture = Image.new("RGB", (64, 64), (20, 40, 160))
    ImageDraw.Draw(picture).rectangle((12, 12, 44, 40), fill=(240, 220, 30))
    control = canny(picture)
    assert output_edge_f1(control, picture) == 1.0
    assert output_edge_f1(control, Image.new("RGB", (64, 64), (20, 40, 160))) == 0.0


def test_colour_map_error_is_zero_for_the_same_grid_and_grows_with_the_difference():
    from huabu.engine.control.color import color

    picture = Image.new("RGB", (64, 64), (200, 30, 30))
    ImageDraw.Draw(picture).rectangle((0, 0, 31, 63), fill=(30, 30, 200))
    grid = color(picture)
    assert colour_map_error(grid, picture) == 0.0
    assert colour_map_error(grid, picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)) == pytest.approx(170 * 2 / 3 /
                                                                                                        255)
    near = Image.new("RGB", (64, 64), (190, 40, 40))
    ImageDraw.Draw(near).rectangle((0, 0, 31, 63), fill=(40, 40, 190))
    assert 0 < colour_map_error(grid, near) < colour_map_error(grid, picture.rotate(180))


def test_maps_must_match_in_size():
    with pytest.raises(InvalidRequest, match="differ in size"):
        edge_f1(np.zeros((8, 8)), np.zeros((8, 9)))
    with pytest.raises(InvalidRequest, match="tolerance"):
        edge_f1(np.zeros((8, 8)), np.zeros((8, 8)), tolerance=-1)
