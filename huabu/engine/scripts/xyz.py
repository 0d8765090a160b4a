"""A1111's X/Y/Z plot (scripts/xyz_grid.py): one generation per combination of up to three axes' values, drawn as a
labelled grid (one per Z value, side by side under Z labels).

Values are A1111's: comma-separated (CSV quoting for commas inside a value), integer ranges `1-5` (step 1),
`1-5 (+2)` (step 2), `1-10 [5]` (5 values spread over the range), the same for decimals, where `0-1 (+0.25)`
includes its end. Axes are named as in A1111 (`Steps`, `CFG Scale`, ...) or, for its positional `script_args`,
by their index in A1111's txt2img / img2img axis list. The slowest axis to change (Checkpoint name) is the outer
loop, as in A1111. Seeds and variation seeds (the request's and the Seed / Var. seed axes' -1 values) are fixed
before the first cell unless `no_fixed_seeds` (A1111 "Keep -1 for seeds"). The hires axes act on a request with
the hires fix on (`enable_hr`), as in A1111.
The grid's infotext is the first cell's plus `Script`, `X Type`, `X Values`, ... as A1111 writes it.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from huabu.core.errors import InvalidRequest
from huabu.core.pnginfo import add_params
from huabu.core.requests import MAX_SEED, GenerateRequest
from huabu.engine.grids import Label, annotate_grid, image_grid
from huabu.engine.scripts.common import Run, ScriptOutput, collect, save_grid

TITLE = "X/Y/Z plot"
MAX_CELLS = 400  # X x Y x Z generations one request may ask for

# A1111 1.10's axis list in order, with the mode an axis is offered in (None: both); positional script_args name
# axes by their index in the list of their mode.
A1111_AXES: tuple[tuple[str, str | None], ...] = (
    ("Nothing", None), ("Seed", None), ("Var. seed", None), ("Var. strength", None), ("Steps", None),
    ("Hires steps", "txt2img"), ("CFG Scale", None), ("Image CFG Scale", "img2img"), ("Prompt S/R", None),
    ("Prompt order", None), ("Sampler", "txt2img"), ("Hires sampler", "txt2img"), ("Sampler", "img2img"),
    ("Checkpoint name", None), ("Negative Guidance minimum sigma", None), ("Sigma Churn", None), ("Sigma min", None),
    ("Sigma max", None), ("Sigma noise", None), ("Schedule type", None), ("Schedule min sigma", None),
    ("Schedule max sigma", None), ("Schedule rho", None), ("Eta", None), ("Clip skip", None), ("Denoising", None),
    ("Initial noise multiplier", None), ("Extra noise", None), ("Hires upscaler", "txt2img"),
    ("Cond. Image Mask Weight", "img2img"), ("VAE", None), ("Styles", None), ("UniPC Order", None),
    ("Face restore", None), ("Token merging ratio", None), ("Token merging ratio high-res", None),
    ("Always discard next-to-last sigma", None), ("SGM noise multiplier", None), ("Refiner checkpoint", None),
    ("Refiner switch at", None), ("RNG source", None),
)

_INT_RANGE = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
_INT_COUNT = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\[(\d+)\s*])?\s*")
_DECIMAL = r"[+-]?\s*\d+(?:\.\d*)?"
_FLOAT_RANGE = re.compile(rf"\s*({_DECIMAL})\s*-\s*({_DECIMAL})(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*")
_FLOAT_COUNT = re.compile(rf"\s*({_DECIMAL})\s*-\s*({_DECIMAL})(?:\s*\[(\d+(?:\.\d*)?)\s*])?\s*")

Apply = Callable[[dict[str, Any], Any, list[Any]], None]  # request data, this value, all the axis' values


@dataclass(frozen=True)
class Axis:
    label: str
    kind: str  # "int" | "float" | "str" | "order"
    apply: Apply
    labelled: bool = True  # the grid label is "Label: value" (else the value alone)
    cost: float = 0.0  # the costliest axis to switch is the outer loop
    choices: bool = False  # A1111 offers a dropdown: its values come in the *_values_dropdown argument


def _field(name: str) -> Apply:
    def apply(data: dict[str, Any], value: Any, values: list[Any]) -> None:
        data[name] = value

    return apply


def _prompt_sr(data: dict[str, Any], value: str, values: list[str]) -> None:
    search = values[0]
    if search not in data["prompt"] and search not in data["negative_prompt"]:
        raise InvalidRequest(f"Prompt S/R did not find {search!r} in the prompt or negative prompt")
    data["prompt"] = data["prompt"].replace(search, value)
    data["negative_prompt"] = data["negative_prompt"].replace(search, value)


def _prompt_order(data: dict[str, Any], order: tuple[str, ...], values: list[Any]) -> None:
    """The tokens put back into the places where they stood, in this order (A1111 apply_order)."""
    prompt = data["prompt"]
    places = sorted((prompt.find(token), token) for token in order)
    parts = []
    for _, token in places:
        index = prompt.find(token)
        parts.append(prompt[:index])
        prompt = prompt[index + len(token):]
    data["prompt"] = "".join(part + token for part, token in zip(parts, order)) + prompt


def _styles(data: dict[str, Any], value: str, values: list[Any]) -> None:
    data["styles"] = [*data["styles"], *value.split(",")]


def _control_weight(data: dict[str, Any], value: float, values: list[Any]) -> None:
    if not data["controlnets"]:
        raise InvalidRequest("the ControlNet weight axis needs a ControlNet unit in the request")
    data["controlnets"] = [{**unit, "weight": value} for unit in data["controlnets"]]


def _nothing(data: dict[str, Any], value: Any, values: list[Any]) -> None:
    return None


AXES: dict[str, Axis] = {axis.label.lower(): axis for axis in (
    Axis("Nothing", "str", _nothing, labelled=False),
    Axis("Seed", "int", _field("seed")),
    Axis("Var. seed", "int", _field("subseed")),
    Axis("Var. strength", "float", _field("subseed_strength")),
    Axis("Steps", "int", _field("steps")),
    Axis("Hires steps", "int", _field("hr_second_pass_steps")),
    Axis("CFG Scale", "float", _field("cfg_scale")),
    Axis("Prompt S/R", "str", _prompt_sr, labelled=False),
    Axis("Prompt order", "order", _prompt_order, labelled=False),
    Axis("Sampler", "str", _field("sampler"), labelled=False, choices=True),
    Axis("Hires sampler", "str", _field("hr_sampler"), choices=True),
    Axis("Checkpoint name", "str", _field("model"), labelled=False, cost=1.0, choices=True),
    Axis("Schedule type", "str", _field("schedule_type"), choices=True),
    Axis("Clip skip", "int", _field("clip_skip")),
    Axis("Denoising", "float", _field("denoising_strength")),
    Axis("Hires upscaler", "str", _field("hr_upscaler"), choices=True),
    Axis("Styles", "str", _styles, choices=True),
    Axis("ControlNet weight", "float", _control_weight),
    Axis("Shift", "float", _field("shift")),  # huabu's, for flow models (A1111 has no shift, so no index)
)}
_ALIASES = {"[controlnet] weight": "controlnet weight"}  # sd-webui-controlnet's name for it


@dataclass(frozen=True)
class Plot:
    """The script's arguments by name (A1111's order and meaning)."""

    x_type: str = "Nothing"
    x_values: str = ""
    y_type: str = "Nothing"
    y_values: str = ""
    z_type: str = "Nothing"
    z_values: str = ""
    draw_legend: bool = True
    include_lone_images: bool = False
    include_sub_grids: bool = False
    no_fixed_seeds: bool = False
    margin_size: int = 0
    x_values_dropdown: tuple = ()
    y_values_dropdown: tuple = ()
    z_values_dropdown: tuple = ()
    csv_mode: bool = False
    raw_mode: bool = False
    grid: bool = True  # huabu's own: False makes and saves no grid, only the cells (`huabu xyz --no-grid`)


_POSITIONAL = ("x_type", "x_values", "x_values_dropdown", "y_type", "y_values", "y_values_dropdown", "z_type",
               "z_values", "z_values_dropdown", "draw_legend", "include_lone_images", "include_sub_grids",
               "no_fixed_seeds", "margin_size", "csv_mode", "raw_mode")


def plot_from_args(args: list[Any] | dict[str, Any], mode: str) -> Plot:
    """A1111's positional script_args (axis types as indexes into its axis list for `mode`, or names) or the
    same by name."""
    named = dict(zip(_POSITIONAL, args)) if isinstance(args, list) else dict(args)
    unknown = set(named) - set(Plot.__dataclass_fields__)
    if unknown:
        raise InvalidRequest(f"X/Y/Z plot has no argument {sorted(unknown)[0]!r}")
    for key in ("x_type", "y_type", "z_type"):
        if key in named:
            named[key] = axis_label(named[key], mode)
    for key in ("x_values_dropdown", "y_values_dropdown", "z_values_dropdown"):
        named[key] = tuple(named.get(key) or ())
    for key in ("x_values", "y_values", "z_values"):
        named[key] = "" if named.get(key) is None else str(named[key])
    return Plot(**named)


def axis_label(value: Any, mode: str) -> str:
    """An axis named by A1111's index for `mode` or by label (any case)."""
    if isinstance(value, int) and not isinstance(value, bool):
        labels = [label for label, only in A1111_AXES if only in (None, mode)]
        if not 0 <= value < len(labels):
            raise InvalidRequest(f"X/Y/Z axis index {value} is not in A1111's {mode} axis list (0-{len(labels) - 1})")
        return labels[value]
    return str(value)


def find_axis(label: str) -> Axis:
    key = label.strip().lower()
    axis = AXES.get(_ALIASES.get(key, key))
    if axis is None:
        supported = ", ".join(axis.label for axis in AXES.values())
        raise InvalidRequest(f"X/Y/Z axis {label!r} is not supported; use one of: {supported}")
    return axis


def _csv(text: str) -> list[str]:
    return [item.strip() for row in csv.reader(io.StringIO(text)) for item in row]


def _number(text: str, kind: str, label: str) -> int | float:
    try:
        return int(text.replace(" ", "")) if kind == "int" else float(text.replace(" ", ""))
    except ValueError:
        raise InvalidRequest(f"X/Y/Z {label} value {text!r} is not a {'whole ' if kind == 'int' else ''}number") \
            from None


def _expand(item: str, kind: str, label: str) -> list[int | float]:
    """One value, or the values of a range (see the module docstring)."""
    ranged, counted = (_INT_RANGE, _INT_COUNT) if kind == "int" else (_FLOAT_RANGE, _FLOAT_COUNT)
    match, count = ranged.fullmatch(item), counted.fullmatch(item)
    if match:
        start, end = _number(match.group(1), kind, label), _number(match.group(2), kind, label)
        step = _number(match.group(3), kind, label) if match.group(3) else 1
        if step == 0:
            raise InvalidRequest(f"X/Y/Z {label} range {item!r} has a step of 0")
        if kind == "int":
            return list(range(start, end + 1, step))
        return [float(v) for v in np.arange(start, end + step, step)]
    if count:
        start, end = _number(count.group(1), kind, label), _number(count.group(2), kind, label)
        num = int(float(count.group(3))) if count.group(3) else 1
        spread = np.linspace(start, end, num).tolist()
        return [int(v) for v in spread] if kind == "int" else [float(v) for v in spread]
    return [_number(item, kind, label)]


def axis_values(axis: Axis, text: str, dropdown: tuple, plot: Plot) -> list[Any]:
    """An axis' values: from the dropdown list when A1111 would use it, else parsed from the text."""
    if axis.label == "Nothing":
        return [None]
    if axis.choices and not plot.csv_mode and dropdown:
        items = [str(item) for item in dropdown]
    elif plot.raw_mode and "\n" in text.strip():
        items = text.strip().split("\n")
    else:
        items = _csv(text)
    if not items:
        raise InvalidRequest(f"X/Y/Z axis {axis.label} has no values")
    if axis.kind in ("int", "float"):
        return [value for item in items for value in _expand(item, axis.kind, axis.label)]
    if axis.kind == "order":
        return list(itertools.permutations(items))
    return items


def label_text(axis: Axis, value: Any) -> str:
    if axis.label == "Nothing":
        return ""
    if isinstance(value, float):
        value = round(value, 8)
    if axis.kind == "order":
        value = ", ".join(value)
    elif axis.label == "Checkpoint name":
        value = Path(str(value)).name
    return f"{axis.label}: {value}" if axis.labelled else str(value)


SEED_AXES = ("Seed", "Var. seed")  # their -1 values are picked before the first cell, as A1111's fix_axis_seeds


def _fixed_seeds(axis: Axis, values: list[Any]) -> list[Any]:
    if axis.label not in SEED_AXES:
        return values
    return [secrets.randbelow(MAX_SEED) if value in (None, -1) else value for value in values]


@dataclass(frozen=True)
class _Planned:
    plot: Plot
    axes: list[Axis]
    values: list[list[Any]]
    requests: dict[tuple[int, int, int], GenerateRequest]  # by (x, y, z) index


def _plan(base: GenerateRequest, args: list[Any] | dict[str, Any]) -> _Planned:
    """Every cell's request, checked, before the first generation (seeds fixed unless no_fixed_seeds)."""
    plot = plot_from_args(args, base.mode)
    axes = [find_axis(getattr(plot, f"{which}_type")) for which in "xyz"]
    values = [axis_values(axis, getattr(plot, f"{which}_values"), getattr(plot, f"{which}_values_dropdown"), plot)
              for axis, which in zip(axes, "xyz")]
    if not plot.no_fixed_seeds:
        for name in ("seed", "subseed"):  # A1111's fix_seed picks both
            if getattr(base, name) == -1:
                base = base.model_copy(update={name: secrets.randbelow(MAX_SEED)})
        values = [_fixed_seeds(axis, axis_values_) for axis, axis_values_ in zip(axes, values)]
    count = len(values[0]) * len(values[1]) * len(values[2])
    if count > MAX_CELLS:
        raise InvalidRequest(f"the X/Y/Z plot has {count} cells; at most {MAX_CELLS}")
    cells = itertools.product(*(range(len(axis_values_)) for axis_values_ in values))
    return _Planned(plot, axes, values, {cell: _cell_request(base, axes, values, cell) for cell in cells})


def requests(base: GenerateRequest, args: list[Any] | dict[str, Any]) -> list[GenerateRequest]:
    return list(_plan(base, args).requests.values())


def run(base: GenerateRequest, args: list[Any] | dict[str, Any], generate: Run, folder: Path | None) -> ScriptOutput:
    planned = _plan(base, args)
    results: dict[tuple[int, int, int], Any] = {}
    for cell in _order(planned.axes, planned.values):
        results[cell] = generate(planned.requests[cell])
        if results[cell].interrupted:
            break
    return _assemble(planned.plot, planned.axes, planned.values, results, folder)


def _cell_request(base: GenerateRequest, axes: list[Axis], values: list[list[Any]], cell: tuple[int, int, int]
                  ) -> GenerateRequest:
    data = base.to_data()
    for axis, axis_values_, index in zip(axes, values, cell):
        axis.apply(data, axis_values_[index], axis_values_)
    return GenerateRequest.from_data(data)


def _order(axes: list[Axis], values: list[list[Any]]) -> list[tuple[int, int, int]]:
    """Cells in processing order: z, then y, then x, except that costlier axes move outwards (A1111)."""
    loops = sorted([2, 1, 0], key=lambda i: -axes[i].cost)  # stable: z, y, x among equal costs
    order = []
    for combo in itertools.product(*(range(len(values[i])) for i in loops)):
        cell = [0, 0, 0]
        for position, i in enumerate(loops):
            cell[i] = combo[position]
        order.append(tuple(cell))
    return order


def _grid_fields(plot: Plot, axes: list[Axis], values: list[list[Any]], with_z: bool) -> dict[str, str]:
    fields = {"Script": TITLE}
    for which, axis, axis_values_ in zip("XYZ", axes, values):
        if axis.label == "Nothing" or (which == "Z" and not with_z):
            continue
        fields[f"{which} Type"] = axis.label
        fields[f"{which} Values"] = getattr(plot, f"{which.lower()}_values") or ", ".join(map(str, axis_values_))
        if axis.label in SEED_AXES and not plot.no_fixed_seeds:
            fields[f"Fixed {which} Values"] = ", ".join(str(v) for v in axis_values_)
    return fields


def _assemble(plot: Plot, axes: list[Axis], values: list[list[Any]], results: dict, folder: Path | None
              ) -> ScriptOutput:
    xs, ys, zs = values
    done = [results[cell] for cell in sorted(results, key=lambda c: (c[2], c[1], c[0])) if results[cell].images]
    if not done:
        raise InvalidRequest("the X/Y/Z plot was interrupted before its first image")
    first = results.get((0, 0, 0)) or done[0]
    size, mode = first.images[0].size, first.images[0].mode

    def image(cell):  # a cell an interruption left undone is black, as in A1111
        result = results.get(cell)
        return result.images[0] if result and result.images else _blank(size, mode)

    if not plot.grid:
        return collect([results[cell] for cell in sorted(results, key=lambda c: (c[2], c[1], c[0]))])
    sub_grids = []
    for iz in range(len(zs)):
        grid = image_grid([image((ix, iy, iz)) for iy in range(len(ys)) for ix in range(len(xs))], rows=len(ys))
        if plot.draw_legend:
            grid = annotate_grid(grid, size[0], size[1], [[Label(label_text(axes[0], x))] for x in xs],
                                 [[Label(label_text(axes[1], y))] for y in ys], plot.margin_size)
        sub_grids.append(grid)
    main = image_grid(sub_grids, rows=1)
    if plot.draw_legend:
        main = annotate_grid(main, sub_grids[0].width, sub_grids[0].height,
                             [[Label(label_text(axes[2], z))] for z in zs], [[Label()]])
    main_text = add_params(first.infotexts[0], _grid_fields(plot, axes, values, with_z=True))
    sub_texts = [add_params((results.get((0, 0, iz)) or first).infotexts[0], _grid_fields(plot, axes, values, False))
                 for iz in range(len(zs))]
    output = ScriptOutput([main], [first.seeds[0]], [main_text], first.request_used, first.model,
                          interrupted=any(result.interrupted for result in results.values()))
    if folder is not None:
        output.paths.append(save_grid(main, main_text, folder, "xyz_grid"))
    if plot.include_sub_grids:
        output.images += sub_grids
        output.seeds += [first.seeds[0]] * len(sub_grids)
        output.infotexts += sub_texts
    for cell in sorted(results, key=lambda c: (c[2], c[1], c[0])):
        output.paths += results[cell].paths
        output.gallery_ids += results[cell].gallery_ids
        if plot.include_lone_images:
            output.images += results[cell].images
            output.seeds += results[cell].seeds
            output.infotexts += results[cell].infotexts
    return output


def _blank(size: tuple[int, int], mode: str):
    from PIL import Image

    return Image.new(mode, size)
