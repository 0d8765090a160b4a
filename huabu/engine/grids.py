"""Image grids as A1111 draws them (modules/images.py image_grid, draw_grid_annotations): cells pasted row by row
on black, labels above the columns and left of the rows on white, each label wrapped at spaces and shrunk until it
fits its column, in a font that has CJK glyphs so Chinese labels are drawn as text rather than boxes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from huabu.engine.fonts import CJK_FONT_PATHS

# Fonts with CJK glyphs first (grid labels may be Chinese), then a Latin-only one.
FONT_CANDIDATES = (*CJK_FONT_PATHS, Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"))
MIN_FONT_SIZE = 10  # A1111's (width + height) / 25 is 5 px on a 64 px cell: too small to read
_ACTIVE, _INACTIVE = (0, 0, 0), (153, 153, 153)


@dataclass
class Label:
    """One label line; an inactive one (a prompt matrix part left out) is grey and struck through."""

    text: str = ""
    active: bool = True


def image_grid(images: list[Image.Image], rows: int) -> Image.Image:
    """Images pasted left to right, top to bottom, `rows` rows, on black (A1111 image_grid)."""
    cols = math.ceil(len(images) / rows)
    width, height = images[0].size
    grid = Image.new("RGB", (cols * width, rows * height), "black")
    for index, image in enumerate(images):
        grid.paste(image.convert("RGB"), (index % cols * width, index // cols * height))
    return grid


def batch_grid(images: list[Image.Image]) -> Image.Image:
    """The grid A1111 saves for a batch: round(sqrt(n)) rows (its default n_rows = -1), unlabelled."""
    return image_grid(images, rows=min(len(images), max(1, round(math.sqrt(len(images))))))


@lru_cache(maxsize=64)
def grid_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    for path in FONT_CANDIDATES:
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines = [""]
    for word in text.split():
        candidate = f"{lines[-1]} {word}".strip()
        if draw.textlength(candidate, font=font) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def _measured(draw: ImageDraw.ImageDraw, labels: list[Label], font, width: int) -> list[tuple[Label, int, int]]:
    """(label, its width, its height) per wrapped line."""
    out = []
    for label in labels:
        for line in _wrap(draw, label.text, font, width):
            box = draw.multiline_textbbox((0, 0), line, font=font)
            out.append((Label(line, label.active), box[2] - box[0], box[3] - box[1]))
    return out


def _block_height(lines: list[tuple[Label, int, int]], spacing: int) -> int:
    return sum(height + spacing for _, _, height in lines) - spacing if lines else 0


def _draw_lines(draw: ImageDraw.ImageDraw, x: float, y: float, lines, size: int, allowed: int, spacing: int) -> None:
    for label, _, height in lines:
        fitted = size
        while fitted > 1 and draw.textlength(label.text, font=grid_font(fitted)) > allowed:
            fitted -= 1
        font = grid_font(fitted)
        colour = _ACTIVE if label.active else _INACTIVE
        draw.text((x, y + height / 2), label.text, font=font, fill=colour, anchor="mm")
        if not label.active:
            half = draw.textlength(label.text, font=font) / 2
            draw.line((x - half, y + height / 2, x + half, y + height / 2), fill=colour, width=max(1, fitted // 10))
        y += height + spacing


def annotate_grid(grid: Image.Image, width: int, height: int, columns: list[list[Label]], rows: list[list[Label]],
                  margin: int = 0) -> Image.Image:
    """The grid of `width` x `height` cells with `columns` labels above and `rows` labels left of it, `margin`
    pixels between cells (A1111 draw_grid_annotations, with a MIN_FONT_SIZE floor)."""
    size = max(MIN_FONT_SIZE, (width + height) // 25)
    spacing = size // 2
    font = grid_font(size)
    ncols, nrows = grid.width // width, grid.height // height
    pad_left = width * 3 // 4 if any(label.text for labels in rows for label in labels) else 0
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    col_lines = [_measured(measure, labels, font, width) for labels in columns]
    row_lines = [_measured(measure, labels, font, pad_left) for labels in rows]
    col_heights = [_block_height(lines, spacing) for lines in col_lines]
    pad_top = max(col_heights) + spacing * 2 if any(col_heights) else 0
    out = Image.new("RGB", (grid.width + pad_left + margin * (ncols - 1), grid.height + pad_top + margin * (nrows - 1)),
                    "white")
    for row in range(nrows):
        for col in range(ncols):
            cell = grid.crop((width * col, height * row, width * (col + 1), height * (row + 1)))
            out.paste(cell, (pad_left + (width + margin) * col, pad_top + (height + margin) * row))
    draw = ImageDraw.Draw(out)
    for col, lines in enumerate(col_lines):
        x = pad_left + (width + margin) * col + width / 2
        _draw_lines(draw, x, pad_top / 2 - col_heights[col] / 2, lines, size, width, spacing)
    for row, lines in enumerate(row_lines):
        y = pad_top + (height + margin) * row + height / 2 - _block_height(lines, spacing) / 2
        _draw_lines(draw, pad_left / 2, y, lines, size, pad_left, spacing)
    return out


def next_grid_path(folder: Path, prefix: str) -> Path:
    """`folder/<prefix>-NNNN.png`, the next free number (A1111 names grids so)."""
    folder.mkdir(parents=True, exist_ok=True)
    numbers = [int(path.stem.rsplit("-", 1)[1]) for path in folder.glob(f"{prefix}-*.png")
               if path.stem.rsplit("-", 1)[1].isdigit()]
    return folder / f"{prefix}-{max(numbers, default=-1) + 1:04d}.png"
