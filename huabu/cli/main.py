"""`huabu ...`: the entry point; one sub-command per user task.

Each sub-command is added by one small registration function listed in COMMANDS ("module:function"); it builds
its argparse sub-parser and sets `handler`. Handlers import torch/diffusers themselves, so `huabu --help` stays
fast. A HuabuError becomes `error: <one line>` on stderr and exit code 2; anything else is a bug and keeps its
traceback. The options sub-commands share are in huabu.cli.options.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from huabu import __version__
from huabu.cli.options import Subparsers
from huabu.core.errors import HuabuError

# Registration functions, in the order `huabu --help` lists them. Later work adds its own ("huabu.cli.<name>:register")
# here; a registration module must stay import-light.
COMMANDS = [
    "huabu.cli.images:register_generate",
    "huabu.cli.images:register_img2img",
    "huabu.cli.images:register_inpaint",
    "huabu.cli.images:register_outpaint",
    "huabu.cli.upscale:register",
    "huabu.cli.images:register_reproduce",
    "huabu.cli.images:register_png_info",
    "huabu.cli.images:register_history",
    "huabu.cli.listings:register_samplers",
    "huabu.cli.listings:register_models",
    "huabu.cli.control:register",
    "huabu.cli.tiny:register",
    "huabu.cli.studio:register",
    "huabu.cli.serve:register",
    "huabu.cli.video:register",
    "huabu.cli.lora:register",
    "huabu.cli.merge:register",
    "huabu.cli.scripts:register_xyz",
    "huabu.cli.apps:register",
    "huabu.cli.main:register_train",
]

# `huabu train <stage>`: each training task adds its stage here ("module:function", given the stage sub-parsers).
TRAIN_STAGES = [
    "huabu.cli.lora:register_train",
    "huabu.cli.train_controlnet:register_train",
    "huabu.cli.train_lcm:register_train",
    "huabu.cli.train_embedding:register_train",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="huabu", description="huabu (画布): Stable Diffusion on your own machine.")
    parser.add_argument("--version", action="version", version=f"huabu {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for target in COMMANDS:
        module, _, function = target.partition(":")
        getattr(importlib.import_module(module), function)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.handler(args) or 0)
    except HuabuError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def register_train(sub: Subparsers) -> None:
    parser = sub.add_parser("train", help="train add-ons for a model (LoRA, ...) on your images",
                            description="Train something on your own images; one stage per kind (huabu train lora).")
    stages = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for target in TRAIN_STAGES:
        module, _, function = target.partition(":")
        getattr(importlib.import_module(module), function)(stages)


if __name__ == "__main__":
    sys.exit(main())
