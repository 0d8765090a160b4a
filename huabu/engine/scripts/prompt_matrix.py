"""A1111's Prompt matrix (scripts/prompt_matrix.py): `a cat|red|in a hat` makes one image per combination of the
parts after the first `|` (2^n images), laid out as a grid whose column and row labels show each part, grey and
struck through where it is left out. Parts join with ", " (or " "), after the first part (or before it, "put at
start"); all images share one seed unless `different_seeds`. The matrix is over the prompt or the negative prompt.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huabu.core.errors import InvalidRequest
from huabu.core.requests import MAX_SEED, GenerateRequest
from huabu.engine.grids import Label, annotate_grid, image_grid
from huabu.engine.scripts.common import Run, ScriptOutput, collect, rebuild, save_grid

MAX_PARTS = 8  # 2^8 = 256 images


@dataclass(frozen=True)
class Matrix:
    put_at_start: bool = False
    different_seeds: bool = False
    prompt_type: str = "positive"  # or "negative"
    variations_delimiter: str = "comma"  # or "space"
    margin_size: int = 0


_POSITIONAL = ("put_at_start", "different_seeds", "prompt_type", "variations_delimiter", "margin_size")


def matrix_from_args(args: list[Any] | dict[str, Any]) -> Matrix:
    named = dict(zip(_POSITIONAL, args)) if isinstance(args, list) else dict(args)
    unknown = set(named) - set(_POSITIONAL)
    if unknown:
        raise InvalidRequest(f"prompt matrix has no argument {sorted(unknown)[0]!r}")
    matrix = Matrix(**named)
    if matrix.prompt_type not in ("positive", "negative"):
        raise InvalidRequest(f"prompt matrix prompt_type must be positive or negative, got {matrix.prompt_type!r}")
    if matrix.variations_delimiter not in ("comma", "space"):
        raise InvalidRequest(f"prompt matrix variations_delimiter must be comma or space, got "
                             f"{matrix.variations_delimiter!r}")
    return matrix


def combinations(text: str, put_at_start: bool, delimiter: str) -> list[str]:
    """The prompts of a matrix, combination i holding part n+1 when bit n of i is set (A1111's order)."""
    parts = text.split("|")
    prompts = []
    for number in range(2 ** (len(parts) - 1)):
        chosen = [part.strip().strip(",") for n, part in enumerate(parts[1:]) if number & (1 << n)]
        chosen = [*chosen, parts[0]] if put_at_start else [parts[0], *chosen]
        prompts.append(delimiter.join(chosen))
    return prompts


def _parts(base: GenerateRequest, matrix: Matrix) -> tuple[str, list[str]]:
    field = "prompt" if matrix.prompt_type == "positive" else "negative_prompt"
    parts = getattr(base, field).split("|")
    if len(parts) < 2:
        raise InvalidRequest(f"prompt matrix needs parts separated by | in the {field.replace('_', ' ')}")
    if len(parts) - 1 > MAX_PARTS:
        raise InvalidRequest(f"prompt matrix has {len(parts) - 1} parts after the first; at most {MAX_PARTS}")
    return field, parts


def requests(base: GenerateRequest, args: list[Any] | dict[str, Any]) -> list[GenerateRequest]:
    """One request per combination, batch 1, each checked before the first generation."""
    matrix = matrix_from_args(args)
    field, parts = _parts(base, matrix)
    seed = base.seed if base.seed != -1 else secrets.randbelow(MAX_SEED)
    prompts = combinations(getattr(base, field), matrix.put_at_start,
                           ", " if matrix.variations_delimiter == "comma" else " ")
    return [rebuild(base, **{field: prompt, "seed": (seed + (i if matrix.different_seeds else 0)) % (MAX_SEED + 1),
                             "batch_size": 1, "n_iter": 1})
            for i, prompt in enumerate(prompts)]


def run(base: GenerateRequest, args: list[Any] | dict[str, Any], generate: Run, folder: Path | None) -> ScriptOutput:
    matrix = matrix_from_args(args)
    _, parts = _parts(base, matrix)
    planned = requests(base, args)
    results = []
    for request in planned:
        results.append(generate(request))
        if results[-1].interrupted:
            break
    output = collect(results)
    if len(output.images) < len(planned):
        return output  # interrupted: no grid of a partial matrix
    width, height = output.images[0].size
    grid = image_grid(output.images, rows=1 << ((len(parts) - 1) // 2))
    grid = annotate_grid(grid, width, height, *_labels(parts[1:]), matrix.margin_size)
    output.images.insert(0, grid)
    output.seeds.insert(0, output.seeds[0])
    output.infotexts.insert(0, output.infotexts[0])
    if folder is not None:
        output.paths.insert(0, save_grid(grid, output.infotexts[0], folder, "prompt_matrix"))
    return output


def _labels(parts: list[str]) -> tuple[list[list[Label]], list[list[Label]]]:
    """Column labels for the first half of the parts, row labels for the rest (A1111 draw_prompt_matrix)."""
    boundary = math.ceil(len(parts) / 2)
    across, down = parts[:boundary], parts[boundary:]
    columns = [[Label(part, bool(pos & (1 << i))) for i, part in enumerate(across)] for pos in range(1 << len(across))]
    rows = [[Label(part, bool(pos & (1 << i))) for i, part in enumerate(down)] for pos in range(1 << len(down))]
    return columns, rows
