"""`huabu upscale IMAGE --scale 2 --upscaler NAME -o OUT`: A1111's Extras upscale, without a model run."""

from __future__ import annotations

import argparse
from pathlib import Path

from huabu.cli.options import Subparsers, parse_size, settings_from_args


def register(sub: Subparsers) -> None:
    parser = sub.add_parser("upscale", help="enlarge an image (A1111's Extras)",
                            description="Enlarge an image with an upscaler: None, Lanczos, Nearest, huabu-tiny-2x "
                                        "or a Real-ESRGAN compact model in ~/.huabu/upscalers (by file name).")
    parser.add_argument("image", type=Path)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--scale", type=float, default=2.0, help="factor (default 2)")
    size.add_argument("--size", type=parse_size, metavar="WxH", help="exact size (the centre is cropped to fit)")
    parser.add_argument("--upscaler", default="Lanczos", help="None, Lanczos or Nearest")
    parser.add_argument("--upscaler-2", default="None", help="a second upscaler blended in by --visibility")
    parser.add_argument("--visibility", type=float, default=0.0, help="weight of --upscaler-2 (0..1)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output PNG path")
    parser.set_defaults(handler=run_upscale)


def run_upscale(args: argparse.Namespace) -> int:
    from huabu.core.errors import InvalidRequest
    from huabu.core.pnginfo import read_parameters, save_png_atomic
    from huabu.engine.images import load_image
    from huabu.engine.upscalers import Upscalers, target_size, upscale

    if args.scale <= 0 or not 0 <= args.visibility <= 1:
        raise InvalidRequest("--scale must be above 0 and --visibility between 0 and 1")
    image = load_image(str(args.image), "image")
    size = target_size(image, args.scale, args.size)
    folder = settings_from_args(args).upscalers_dir
    result = upscale(image, size, args.upscaler, Upscalers(folder), args.upscaler_2, args.visibility)
    path = save_png_atomic(result, args.output, read_parameters(args.image) or None)
    print(f"{path}  ({result.width}x{result.height})")
    return 0
