"""`huabu merge A B [C]`: A1111's checkpoint merger (huabu.engine.merge) as a command."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    parser = sub.add_parser(
        "merge", help="merge checkpoints (weighted sum, add difference) into one .safetensors",
        description="A1111's checkpoint merger: weighted-sum A*(1-alpha)+B*alpha, add-difference A+(B-C)*alpha, or "
                    "no-interpolation (A alone, e.g. to bake a VAE or LoRA or to halve it). Models are names in the "
                    "models folder, single files (LDM keys) or diffusers folders; the output is LDM-key safetensors "
                    "with A1111's merge metadata.")
    parser.add_argument("models", nargs="+", metavar="MODEL", help="A, then B, then C (add-difference)")
    parser.add_argument("--method", default="weighted-sum",
                        choices=("weighted-sum", "add-difference", "no-interpolation"))
    parser.add_argument("--alpha", type=float, default=0.3, help="the multiplier (default: 0.3)")
    parser.add_argument("--fp16", action="store_true", help="save float weights as fp16 (A1111 'Save as float16')")
    parser.add_argument("--vae", help="bake in this VAE (a VAE file or a diffusers AutoencoderKL folder)")
    parser.add_argument("--bake-lora", action="append", default=[], metavar="NAME:W",
                        help="fuse this LoRA into the result at weight W (repeatable)")
    parser.add_argument("--model-config", metavar="CONFIG",
                        help="config to load a single-file A with when baking LoRAs and its kind is not detected")
    parser.add_argument("-o", "--output", required=True, help="OUT.safetensors")
    parser.add_argument("--allow-unsafe-pickle", action="store_true", help="read pickle .ckpt inputs you trust")
    parser.set_defaults(handler=run_merge)


def run_merge(args: argparse.Namespace) -> int:
    from huabu.cli.options import parse_lora, quiet_libraries, settings_from_args
    from huabu.core.errors import InvalidRequest
    from huabu.core.requests import LoraSpec

    if len(args.models) > 3:
        raise InvalidRequest(f"merge takes at most three models (A B C), got {len(args.models)}")
    quiet_libraries()
    from huabu.engine.merge import MergeRecipe, merge_checkpoints

    names = [*args.models, None, None]
    recipe = MergeRecipe(primary=names[0], secondary=names[1], tertiary=names[2], method=args.method,
                         alpha=args.alpha, fp16=args.fp16, vae=args.vae, config=args.model_config,
                         loras=tuple(LoraSpec(**parse_lora(text)) for text in args.bake_lora))
    settings = settings_from_args(args).with_(device="cpu", dtype="fp32")
    print(merge_checkpoints(recipe, settings, args.output))
    return 0
