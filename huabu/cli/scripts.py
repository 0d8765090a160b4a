"""`huabu xyz`: A1111's X/Y/Z plot from the command line (huabu.engine.scripts.xyz); the grid and every image are
saved with their infotexts."""

from __future__ import annotations

import argparse
from pathlib import Path

from huabu.cli.options import Subparsers, add_generation_options, add_hires_options


def register_xyz(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "xyz", help="X/Y/Z plot: a labelled grid over changed parameters",
        description='A1111\'s X/Y/Z plot. Each axis is "TYPE: values", e.g. --x "Steps: 10, 20" --y "CFG Scale: 3-7 '
                    '(+2)" --z "Prompt S/R: cat, dog". Types: Seed, Var. seed, Var. strength, Steps, Hires steps, CFG '
                    'Scale, Prompt S/R, Prompt order, Sampler, Hires sampler, Checkpoint name, Schedule type, Clip '
                    'skip, Denoising, Hires upscaler, Styles, ControlNet weight. Values '
                    'are comma-separated; ranges 1-5, 1-5 (+2), 1-10 [5]; LoRA weights via Prompt S/R on the tag.')
    add_generation_options(parser)
    add_hires_options(parser)  # for the Hires axes, which act with the hires fix on
    for axis in "xyz":
        parser.add_argument(f"--{axis}", metavar='"TYPE: VALUES"', help=f"the {axis.upper()} axis")
    parser.add_argument("--image", type=Path, help="input image: plot img2img instead of txt2img")
    parser.add_argument("--strength", type=float, default=0.75, help="denoising strength with --image")
    parser.add_argument("--no-grid", action="store_true", help="save only the images, no grid")
    parser.add_argument("--no-legend", action="store_true", help="no axis labels on the grid")
    parser.add_argument("--keep-seed", action="store_true",
                        help="keep a seed of -1 random in every cell (A1111 'Keep -1 for seeds')")
    parser.add_argument("--margin", type=int, default=0, help="pixels between grid cells")
    parser.set_defaults(handler=run_xyz)


def axis_arg(text: str | None) -> tuple[str, str]:
    """ "Steps: 10, 20" -> ("Steps", "10, 20"); nothing -> the Nothing axis."""
    from huabu.core.errors import InvalidRequest

    if not text:
        return "Nothing", ""
    label, sep, values = text.partition(":")
    if not sep or not values.strip():
        raise InvalidRequest(f'axis {text!r} must look like "TYPE: values", e.g. "Steps: 10, 20"')
    return label.strip(), values.strip()


def run_xyz(args: argparse.Namespace) -> int:
    from huabu.cli.images import run_generation

    plot: dict = {"draw_legend": not args.no_legend, "no_fixed_seeds": args.keep_seed, "margin_size": args.margin,
                  "include_lone_images": True, "grid": not args.no_grid}
    for axis in "xyz":
        plot[f"{axis}_type"], plot[f"{axis}_values"] = axis_arg(getattr(args, axis))
    return run_generation(args, "img2img" if args.image else "txt2img", {"name": "x/y/z plot", "args": plot})

