"""`huabu video "prompt" --frames 16 --fps 8 -o out.mp4`: text-to-video and, with --image, image-to-video."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from huabu.cli.options import (
    add_control_options,
    add_prompt_options,
    add_runtime_options,
    control_units_from_args,
    parse_lora,
    parse_size,
    quiet_libraries,
    settings_from_args,
)

FORMATS = ("mp4", "gif", "webm")


def register(sub) -> None:
    parser = sub.add_parser(
        "video", help="text to video, or animate an image (--image)",
        description="Make a video with an AnimateDiff motion module on an SD 1.x-shaped model, or with a ModelScope "
                    "/ I2VGen-XL video model. The container follows -o's extension (.mp4 H.264, .webm VP9, .gif); "
                    "the parameters are stored in the file's comment and in the gallery.")
    parser.add_argument("prompt", help="A1111 prompt syntax: (word:1.2), [from:to:when], [a|b], <lora:name:w>, BREAK")
    parser.add_argument("--negative", default="", help="negative prompt")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("-o", "--output", type=Path,
                        help="a .mp4/.webm/.gif file, or a folder (default: ~/.huabu/outputs)")
    parser.add_argument("--format", choices=FORMATS, default="mp4", help="container when -o is a folder")
    parser.add_argument("--motion-module", help="AnimateDiff motion module: a name in ~/.huabu/motion, a diffusers "
                                                "MotionAdapter folder, a .safetensors file, or a hub id (online)")
    parser.add_argument("--image", type=Path, help="animate this image: the first frame stays close to it")
    parser.add_argument("--strength", type=float, default=0.8,
                        help="with --image: how far the frames may move from the image (0..1)")
    parser.add_argument("--no-anchor", dest="anchor", action="store_false",
                        help="with --image: do not pin frame 0 to the image at every step")
    parser.add_argument("--sparse-control", metavar="MODEL",
                        help="with --image: a SparseCtrl RGB model (folder, name in ~/.huabu/controlnet, hub id)")
    parser.add_argument("--sparse-control-scale", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.0, help="CFG scale")
    parser.add_argument("--sampler", default="DPM++ 2M", help="A1111 name, e.g. 'Euler a', 'DPM++ 2M Karras'")
    parser.add_argument("--schedule", default="Automatic", help="schedule type: Automatic, Karras, Exponential...")
    parser.add_argument("--seed", type=int, default=-1, help="-1 picks a random seed (recorded in the video)")
    parser.add_argument("--size", type=parse_size, metavar="WxH", help="default: the model's size (or the image's)")
    add_prompt_options(parser)
    add_control_options(parser)
    add_runtime_options(parser)
    parser.set_defaults(handler=run_video)


def request_from_args(args: argparse.Namespace):
    from huabu.core.requests import VideoRequest

    width, height = args.size if args.size else (None, None)
    suffix = args.output.suffix.lower().lstrip(".") if args.output is not None else ""
    fields = dict(prompt=args.prompt, negative_prompt=args.negative, styles=args.style, frames=args.frames,
                  fps=args.fps, steps=args.steps, cfg_scale=args.cfg, sampler=args.sampler,
                  schedule_type=args.schedule, seed=args.seed, width=width, height=height, model=args.model,
                  checkpoint_config=args.checkpoint_config, motion_module=args.motion_module,
                  clip_skip=args.clip_skip, loras=[parse_lora(text) for text in args.lora],
                  controlnets=control_units_from_args(args),
                  format=suffix if suffix in FORMATS else args.format)
    if args.image is not None:
        fields.update(init_image=str(args.image), denoising_strength=args.strength, anchor_first_frame=args.anchor,
                      sparse_control=args.sparse_control, sparse_control_scale=args.sparse_control_scale)
    elif args.sparse_control:
        fields.update(sparse_control=args.sparse_control)  # refused by the request: SparseCtrl needs --image
    return VideoRequest.create(**fields)


def run_video(args: argparse.Namespace) -> int:
    request = request_from_args(args)  # validate before anything heavy is imported
    quiet_libraries()
    from tqdm import tqdm

    from huabu.engine.generate import Engine

    engine = Engine(settings_from_args(args))
    bar = None

    def update(p) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=p.steps, desc=f"video ({request.frames} frames)", unit="step", file=sys.stderr,
                       disable=None)
        bar.update(p.step - bar.n)

    try:
        result = engine.generate_video(request, progress=update, save=True, output=args.output)
    finally:
        if bar is not None:
            bar.close()
    if result.path is None:
        print("interrupted before any frame was made; nothing written", file=sys.stderr)
        return 130
    note = " (interrupted: partly denoised)" if result.interrupted else ""
    print(f"{result.path}  (seed {result.seed}, {len(result.frames)} frames at {request.fps} fps){note}")
    if result.first_frame:
        fidelity = result.first_frame
        print(f"first frame vs --image: PSNR {fidelity['psnr']:.1f} dB, mean abs difference "
              f"{fidelity['mean_abs_diff']:.1f}/255")
    return 0
