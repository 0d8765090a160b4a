"""`huabu apps replace | try-on | instant-id | portrait`: the course's applications (huabu.engine.apps,
huabu.training.portrait). Each validates its AppRequest before torch is imported, shows progress on stderr, prints
the saved files, and turns a user's mistake into one `error:` line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from huabu.cli.options import Subparsers, add_runtime_options, parse_size, quiet_libraries, settings_from_args


def register(sub: Subparsers) -> None:
    parser = sub.add_parser("apps", help="applications: replace, try-on, instant-id, portrait",
                            description="The course's applications over the one generation path.")
    apps = parser.add_subparsers(dest="app", metavar="<app>", required=True)

    replace = apps.add_parser("replace", help="keep a subject exactly, repaint the rest (ReplaceAnything)",
                              description="Keep the subject (or the background) pixel for pixel and repaint the rest "
                                          "from the prompt. The subject comes from --point or --box (GrabCut, or "
                                          "SAM with --sam) or from --mask (white = subject).")
    replace.add_argument("prompt", help="what the repainted part should show")
    replace.add_argument("--image", type=Path, required=True)
    where = replace.add_mutually_exclusive_group(required=True)
    where.add_argument("--point", metavar="X,Y", help="a pixel on the subject")
    where.add_argument("--box", metavar="X0,Y0,X1,Y1", help="a box around the subject")
    where.add_argument("--mask", type=Path, help="the subject as a mask image (white = subject)")
    replace.add_argument("--keep", choices=("subject", "background"), default="subject")
    replace.add_argument("--sam", metavar="FOLDER", help="segment with SAM: a transformers SamModel folder (a name "
                                                         "in ~/.huabu/sam, or a path); default: OpenCV GrabCut")
    _common(replace)
    replace.set_defaults(handler=run_app)

    try_on = apps.add_parser("try-on", help="put an item from one image into a region of another",
                             description="Inpaint the region (--mask or --box) of --image with an IP-Adapter "
                                         "steered by --reference; the rest of the image stays as it was.")
    try_on.add_argument("prompt", nargs="?", default="", help="optional words for the region")
    try_on.add_argument("--reference", type=Path, required=True, help="the item (garment, object)")
    try_on.add_argument("--image", type=Path, required=True, help="the target image")
    region = try_on.add_mutually_exclusive_group(required=True)
    region.add_argument("--mask", type=Path, help="the region as a mask image (white = repaint)")
    region.add_argument("--box", metavar="X0,Y0,X1,Y1", help="the region as a box")
    try_on.add_argument("--controlnet", metavar="NAME", help="a Canny ControlNet holding the target's shapes")
    _ip_options(try_on)
    _common(try_on)
    try_on.set_defaults(handler=run_app)

    instant = apps.add_parser("instant-id", help="one reference image, its identity under any prompt",
                              description="IP-Adapter from --reference (CLIP image embedding) plus a pose, else "
                                          "Canny, ControlNet from the reference when one is installed.")
    instant.add_argument("prompt")
    instant.add_argument("--reference", type=Path, required=True)
    instant.add_argument("--controlnet", metavar="NAME", help="the layout ControlNet (default: an installed pose, "
                                                              "else Canny, one; 'none' for none)")
    instant.add_argument("--size", type=parse_size, metavar="WxH", help="default: the model's size")
    _ip_options(instant)
    _common(instant)
    instant.set_defaults(handler=run_app)

    portrait = apps.add_parser("portrait", help="train a subject from photos, render it in styles (FaceChain)",
                               description="Crop the subject out of --photos, caption the crops, train the "
                                           "portrait-NAME LoRA, render it in prompt-book styles and save a contact "
                                           "sheet. --resume continues an interrupted run.")
    portrait.add_argument("prompt", nargs="?", default="", help="words added after the subject")
    portrait.add_argument("--photos", type=Path, required=True, help="folder of photos of one subject")
    portrait.add_argument("--name", required=True, help="the subject's trigger word (letters, digits, - _)")
    portrait.add_argument("--styles", nargs="+", default=[], metavar="STYLE",
                          help="prompt-book styles (default: the first --count)")
    portrait.add_argument("--count", type=int, default=4, help="styles to render when --styles is not given")
    portrait.add_argument("--train-steps", type=int, default=400)
    portrait.add_argument("--rank", type=int, default=8)
    portrait.add_argument("--resume", action="store_true")
    portrait.add_argument("--style-start", type=float, default=0.0, metavar="FRACTION",
                          help="draw this fraction of the steps from the subject alone before the style joins "
                               "(prompt editing; helps small models keep the subject)")
    portrait.add_argument("--size", type=parse_size, metavar="WxH", help="render size (default: the model's)")
    _common(portrait, styles=False)
    portrait.set_defaults(handler=run_portrait)


def _ip_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ip-adapter-model", default="", metavar="NAME_OR_PATH",
                        help="the IP-Adapter (default: the only one in ~/.huabu/ip-adapter)")
    parser.add_argument("--ip-weight", type=float, default=0.8, help="IP-Adapter weight")


def _common(parser: argparse.ArgumentParser, styles: bool = True) -> None:
    parser.add_argument("--negative", default="", help="negative prompt")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.0, help="CFG scale")
    parser.add_argument("--sampler", default="DPM++ 2M")
    parser.add_argument("--schedule", default="Automatic")
    parser.add_argument("--seed", type=int, default=-1)
    if styles:
        parser.add_argument("--style", action="append", default=[], help="prompt-book style (repeatable)")
        parser.add_argument("--strength", type=float, default=1.0,
                            help="denoising strength of the repainted part (replace, try-on)")
    parser.add_argument("-o", "--output", type=Path, help="output folder (default: ~/.huabu/outputs)")
    add_runtime_options(parser)


def request_from_args(args: argparse.Namespace):
    """The AppRequest the command line describes (one-line InvalidRequest when it cannot be one)."""
    from huabu.core.apps import AppRequest

    fields = dict(app=args.app, prompt=args.prompt, negative_prompt=args.negative, steps=args.steps,
                  cfg_scale=args.cfg, sampler=args.sampler, schedule_type=args.schedule, seed=args.seed,
                  model=args.model)
    for name in ("image", "mask", "reference", "photos"):
        if getattr(args, name, None) is not None:
            fields[name] = str(getattr(args, name))
    for name in ("point", "box", "keep", "sam", "controlnet", "name", "count", "resume", "rank"):
        if getattr(args, name, None) is not None:
            fields[name] = getattr(args, name)
    if getattr(args, "size", None):
        fields["width"], fields["height"] = args.size
    if hasattr(args, "style"):
        fields.update(styles=args.style, denoising_strength=args.strength)
    if hasattr(args, "styles"):
        fields.update(styles=args.styles, train_steps=args.train_steps, style_start=args.style_start)
    if hasattr(args, "ip_weight"):
        fields.update(ip_adapter_model=args.ip_adapter_model, ip_adapter_weight=args.ip_weight)
    return AppRequest.create(**fields)


def run_app(args: argparse.Namespace) -> int:
    request = request_from_args(args)  # validate before anything heavy is imported
    quiet_libraries()
    from huabu.cli.images import progress_bars
    from huabu.engine.apps import run_app as run
    from huabu.engine.generate import Engine

    engine = Engine(settings_from_args(args))
    update, close = progress_bars()
    try:
        result = run(engine, request, progress=update, save=True, outdir=args.output)
    finally:
        close()
    for path, seed in zip(result.paths, result.seeds):
        print(f"{path}  (seed {seed})")
    return 0


def run_portrait(args: argparse.Namespace) -> int:
    request = request_from_args(args)
    quiet_libraries()
    from tqdm import tqdm

    from huabu.cli.stopping import stop_on_ctrl_c
    from huabu.engine.generate import Engine
    from huabu.training.portrait import run_portrait as run

    engine = Engine(settings_from_args(args))
    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, file=sys.stderr, disable=None)
        bar.update(done - bar.n)

    with stop_on_ctrl_c() as cancel:
        try:
            result = run(request, engine, progress, cancel, args.output)
        finally:
            for bar in bars.values():
                bar.close()
    found = ", ".join(f"{count} by {how}" for how, count in result.found.items())
    print(f"subject found: {found}")
    print(f"{result.lora}  (LoRA)")
    for path in result.renders:
        print(path)
    if result.interrupted:
        print("interrupted; run again with --resume to continue", file=sys.stderr)
        return 130
    print(f"{result.sheet}  (contact sheet)")
    return 0
