"""`huabu ...`: one sub-command per user task.

Each sub-command is added by one small registration function listed in COMMANDS ("module:function"); it builds
its argparse sub-parser and sets `handler`. Handlers import torch/diffusers themselves, so `huabu --help` stays
fast. A HuabuError becomes `error: <one line>` on stderr and exit code 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import warnings
from pathlib import Path
from typing import Callable

from huabu import __version__
from huabu.core.errors import HuabuError, InvalidRequest

# Registration functions, in the order `huabu --help` lists them. Later work adds its own ("huabu.cli.<name>:register")
# here; a registration module must stay import-light.
COMMANDS = [
    "huabu.cli.main:register_generate",
    "huabu.cli.main:register_img2img",
    "huabu.cli.main:register_inpaint",
    "huabu.cli.main:register_reproduce",
    "huabu.cli.main:register_png_info",
    "huabu.cli.main:register_history",
    "huabu.cli.main:register_samplers",
    "huabu.cli.main:register_models",
    "huabu.cli.control:register",
    "huabu.cli.tiny:register",
    "huabu.cli.studio:register",
    "huabu.cli.serve:register",
    "huabu.cli.video:register",
    "huabu.cli.lora:register",
    "huabu.cli.main:register_train",
]

# `huabu train <stage>`: each training task adds its stage here ("module:function", given the stage sub-parsers).
TRAIN_STAGES = [
    "huabu.cli.lora:register_train",
    "huabu.cli.train_controlnet:register_train",
]

Subparsers = "argparse._SubParsersAction[argparse.ArgumentParser]"


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


# --- shared options and helpers -------------------------------------------------------------------------------

def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """Options that pick and place the model: shared by every command that generates."""
    group = parser.add_argument_group("model and device")
    group.add_argument("--model", help="huabu-tiny (default), a diffusers folder, a .safetensors file, a name in "
                                       "the models folder, or a hub id (online only)")
    group.add_argument("--model-config", dest="checkpoint_config", metavar="CONFIG",
                       help="config for a single-file checkpoint whose kind is not detected: sd15, sd2-v, sd2-base, "
                            "sdxl, huabu-tiny, or a diffusers folder")
    group.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), help="default: auto")
    group.add_argument("--dtype", choices=("auto", "fp32", "fp16", "bf16"),
                       help="default: auto (fp16 on CUDA, with the VAE upcast when it overflows; fp32 elsewhere)")
    group.add_argument("--allow-unsafe-pickle", action="store_true",
                       help="load pickle .ckpt files (with torch.load(weights_only=True)); only for files you trust")


def add_generation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="A1111 prompt syntax: (word:1.2), [from:to:when], [a|b], <lora:name:w>, BREAK")
    parser.add_argument("--negative", default="", help="negative prompt")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.0, help="CFG scale")
    parser.add_argument("--sampler", default="DPM++ 2M", help="A1111 name, e.g. 'Euler a', 'DPM++ 2M Karras' "
                                                               "(huabu samplers lists them)")
    parser.add_argument("--schedule", default="Automatic", help="schedule type: Automatic, Karras, Exponential...")
    parser.add_argument("--seed", type=int, default=-1, help="-1 picks a random seed (recorded in the PNG)")
    parser.add_argument("--size", type=parse_size, metavar="WxH", help="default: the model's size (or the image's)")
    parser.add_argument("--batch", type=int, default=1, help="images per pipeline call")
    parser.add_argument("--n-iter", type=int, default=1, help="pipeline calls (batches)")
    parser.add_argument("-o", "--output", type=Path, help="output folder (created if missing); default: "
                                                          "~/.huabu/outputs")
    add_prompt_options(parser)
    add_control_options(parser)
    add_runtime_options(parser)


def add_prompt_options(parser: argparse.ArgumentParser) -> None:
    """What shapes the prompt beside its text: styles, LoRAs, clip skip (images and videos alike)."""
    parser.add_argument("--style", action="append", default=[], help="prompt-book style (repeatable)")
    parser.add_argument("--lora", action="append", default=[], metavar="NAME[:WEIGHT]",
                        help="LoRA from the LoRA folder (repeatable; same as <lora:NAME:WEIGHT> in the prompt)")
    parser.add_argument("--clip-skip", type=int, default=1)


def add_control_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ControlNet")
    group.add_argument("--control", action="append", default=[], metavar="MODULE:IMAGE[:WEIGHT[:START:END]]",
                       help="steer with a ControlNet (repeatable): MODULE is canny, softedge, depth, pose, color, or "
                            "none when IMAGE already is a control map; WEIGHT (default 1) and the START:END fraction "
                            "of the steps it acts in (default 0:1), e.g. canny:ref.png:0.8:0:0.6")
    group.add_argument("--controlnet-model", action="append", default=[], metavar="NAME_OR_PATH",
                       help="the ControlNet of the i-th --control (repeatable, in order): a diffusers folder, a "
                            ".safetensors file or a name in ~/.huabu/controlnet; default: the one there whose name "
                            "holds the module's name")
    group.add_argument("--control-mode", choices=("balanced", "prompt", "control"), default="balanced",
                       help="which matters more for all units: balanced, prompt, or control (sd-webui-controlnet's "
                            "control modes)")
    group.add_argument("--control-resize", choices=("crop", "just", "fill"), default="crop",
                       help="fit control images to the output: crop (Crop and Resize), just (stretch), fill (Resize "
                            "and Fill)")
    group.add_argument("--control-res", type=int, metavar="PIXELS",
                       help="preprocessor resolution (short side); default: the output's own (pixel perfect)")


def add_config_options(parser: argparse.ArgumentParser, cls, notes: dict[str, str] | None = None) -> None:
    """One `--field-name` option per field of the config dataclass `cls`, typed by its default (a tuple field takes
    a comma-separated list), so a command and its Python API cannot drift. Options left out keep the dataclass's
    default: build the config with `config_from_args`."""
    notes = notes or {}
    for field in dataclasses.fields(cls):
        default = field.default
        if isinstance(default, tuple):
            kind = _comma_list(float if "float" in str(field.type) else int)
            shown = ",".join(map(str, default)) or "-"
        else:
            kind, shown = type(default), default if default != "" else "-"
        note = notes.get(field.name, "")
        parser.add_argument("--" + field.name.replace("_", "-"), dest=field.name, type=kind, default=argparse.SUPPRESS,
                            help=f"{note} (default: {shown})".lstrip())


def config_from_args(args: argparse.Namespace, cls):
    """The config dataclass `cls` with the options add_config_options added and the user gave."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


def _comma_list(item: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            return tuple(item(value) for value in text.split(",") if value.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None

    return parse


def parse_size(text: str) -> tuple[int, int]:
    """"64x64" (or "64") -> (64, 64)."""
    width, sep, height = text.lower().partition("x")
    try:
        return (int(width), int(height) if sep else int(width))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 512x768, got {text!r}") from None


def parse_lora(text: str) -> dict:
    name, _, weight = text.rpartition(":") if ":" in text else (text, "", "")
    try:
        return {"name": name, "weight": float(weight)} if weight else {"name": text}
    except ValueError:
        raise InvalidRequest(f"--lora {text!r}: weight {weight!r} is not a number; write NAME or NAME:0.8") from None


def settings_from_args(args: argparse.Namespace):
    from huabu.core.settings import Settings

    return Settings.from_env(device=getattr(args, "device", None), dtype=getattr(args, "dtype", None),
                             allow_unsafe_pickle=getattr(args, "allow_unsafe_pickle", False) or None)


def quiet_libraries() -> None:
    """Keep library chatter (deprecation notices, loading bars, torchvision hints) out of the terminal."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def request_from_args(args: argparse.Namespace, mode: str):
    from huabu.core.requests import GenerateRequest

    width, height = args.size if args.size else (None, None)
    fields = dict(mode=mode, prompt=args.prompt, negative_prompt=args.negative, styles=args.style, steps=args.steps,
                  cfg_scale=args.cfg, sampler=args.sampler, schedule_type=args.schedule, seed=args.seed, width=width,
                  height=height, batch_size=args.batch, n_iter=args.n_iter, model=args.model,
                  checkpoint_config=args.checkpoint_config, clip_skip=args.clip_skip,
                  loras=[parse_lora(text) for text in args.lora], controlnets=control_units_from_args(args))
    if mode != "txt2img":
        fields.update(init_image=str(args.image), denoising_strength=args.strength)
    if mode == "inpaint":
        fields.update(mask=str(args.mask), mask_blur=args.mask_blur)
    return GenerateRequest.create(**fields)


def control_units_from_args(args: argparse.Namespace) -> list[dict]:
    from huabu.core.control_units import units_from_cli

    return units_from_cli(args.control, args.controlnet_model, args.control_mode, args.control_resize,
                          args.control_res)


def progress_bars() -> tuple[Callable, Callable[[], None]]:
    """A tqdm bar per pipeline call (per image when --batch is 1), on stderr; off when stderr is not a terminal."""
    from tqdm import tqdm

    state: dict = {"bar": None, "iteration": None}

    def update(p) -> None:
        if state["iteration"] != p.iteration:
            close()
            first, last = p.first_image + 1, p.first_image + p.batch_size
            label = f"image {first}/{p.total_images}" if first == last else f"images {first}-{last}/{p.total_images}"
            state["bar"] = tqdm(total=p.steps, desc=label, unit="step", file=sys.stderr, disable=None)
            state["iteration"] = p.iteration
        state["bar"].update(p.step - state["bar"].n)

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()
            state["bar"] = None

    return update, close


def run_generation(args: argparse.Namespace, mode: str) -> int:
    request = request_from_args(args, mode)  # validate before anything heavy is imported
    quiet_libraries()
    from huabu.engine.generate import Engine

    settings = settings_from_args(args)
    engine = Engine(settings)
    update, close = progress_bars()
    try:
        result = engine.generate(request, progress=update, save=True, outdir=args.output)
    finally:
        close()
    for path, seed in zip(result.paths, result.seeds):
        print(f"{path}  (seed {seed})")
    return 0


# --- generate / img2img / inpaint ----------------------------------------------------------------------------

def register_generate(sub: Subparsers) -> None:
    parser = sub.add_parser("generate", help="text to image", description="Generate images from a prompt.")
    add_generation_options(parser)
    parser.set_defaults(handler=lambda args: run_generation(args, "txt2img"))


def register_img2img(sub: Subparsers) -> None:
    parser = sub.add_parser("img2img", help="image to image", description="Repaint an image guided by a prompt.")
    add_generation_options(parser)
    parser.add_argument("--image", type=Path, required=True, help="input image")
    parser.add_argument("--strength", type=float, default=0.75, help="denoising strength 0..1 (0 keeps the image)")
    parser.set_defaults(handler=lambda args: run_generation(args, "img2img"))


def register_inpaint(sub: Subparsers) -> None:
    parser = sub.add_parser("inpaint", help="repaint the masked part of an image",
                            description="Repaint where the mask is white; keep where it is black.")
    add_generation_options(parser)
    parser.add_argument("--image", type=Path, required=True, help="input image")
    parser.add_argument("--mask", type=Path, required=True, help="mask image of the same size: white = repaint")
    parser.add_argument("--strength", type=float, default=0.75, help="denoising strength 0..1")
    parser.add_argument("--mask-blur", type=int, default=4, help="soften the mask edge when pasting back (pixels)")
    parser.set_defaults(handler=lambda args: run_generation(args, "inpaint"))


# --- reproduce / png-info / history ------------------------------------------------------------------------

def register_reproduce(sub: Subparsers) -> None:
    parser = sub.add_parser("reproduce", help="regenerate a PNG from its parameters and compare",
                            description="Regenerate an image from its A1111 `parameters` chunk alone and compare the "
                                        "pixels: prints `match` (exit 0) or `differs (max abs pixel difference N)` "
                                        "(exit 1).")
    parser.add_argument("file", type=Path)
    parser.add_argument("--image", type=Path, help="source image, for files made by img2img/inpaint")
    parser.add_argument("--mask", type=Path, help="mask, for files made by inpaint")
    parser.add_argument("--control-image", type=Path, action="append", default=[], metavar="IMAGE",
                        help="the image of each ControlNet unit, in order (repeatable; PNGs do not store them); "
                             "img2img/inpaint units without one use --image")
    parser.add_argument("--controlnet-model", action="append", default=[], metavar="NAME_OR_PATH",
                        help="the ControlNet of each unit, in order, when the one the PNG names is not in "
                             "~/.huabu/controlnet")
    parser.add_argument("--tolerance", type=int, default=0, help="largest pixel difference still called a match")
    add_runtime_options(parser)
    parser.set_defaults(handler=run_reproduce)


def request_from_infotext(text: str, model: str | None, image: Path | None, mask: Path | None,
                          control_images: list[Path] | None = None):
    """A GenerateRequest that remakes the image an A1111 infotext describes (the model spec given separately;
    ControlNet units' images given in order, as PNGs do not hold them)."""
    from huabu.core.control_infotext import units_in_params
    from huabu.core.control_units import unit_fields_from_infotext
    from huabu.core.pnginfo import parse_infotext
    from huabu.core.requests import GenerateRequest

    fields = parse_infotext(text)
    missing = [key for key in ("Steps", "Sampler", "CFG scale", "Seed", "Size-1") if key not in fields]
    if missing:
        raise InvalidRequest(f"the parameters lack {', '.join(missing)}; cannot reproduce")
    mode = "inpaint" if "Mask blur" in fields else "img2img" if "Denoising strength" in fields else "txt2img"
    if mode == "inpaint" and "Denoising strength" not in fields:
        raise InvalidRequest("the parameters have Mask blur (inpaint) but lack Denoising strength; cannot reproduce")
    if mode != "txt2img" and image is None:
        raise InvalidRequest(f"this image was made by {mode}; its source image is not stored in the PNG: pass it "
                             f"with --image{' and --mask' if mode == 'inpaint' else ''}")
    if mode == "inpaint" and mask is None:
        raise InvalidRequest("this image was made by inpaint: pass its mask with --mask")
    data = dict(mode=mode, prompt=fields["Prompt"], negative_prompt=fields["Negative prompt"],
                steps=_number(fields, "Steps", int), cfg_scale=_number(fields, "CFG scale", float),
                sampler=str(fields["Sampler"]), schedule_type=str(fields.get("Schedule type", "Automatic")),
                seed=_number(fields, "Seed", int), width=fields["Size-1"], height=fields["Size-2"], model=model,
                clip_skip=_number({"Clip skip": 1, **fields}, "Clip skip", int))
    if mode != "txt2img":
        data.update(init_image=str(image), denoising_strength=_number(fields, "Denoising strength", float))
    if mode == "inpaint":
        data.update(mask=str(mask), mask_blur=_number(fields, "Mask blur", int))
    units = [unit_fields_from_infotext(unit) for unit in units_in_params(fields)]
    control_images = list(control_images or [])
    if len(control_images) > len(units) or (mode == "txt2img" and len(control_images) < len(units)):
        raise InvalidRequest(f"this image was made with {len(units)} ControlNet unit(s); pass the image of each with "
                             f"--control-image, in order (got {len(control_images)})")
    for unit, control_image in zip(units, control_images):
        unit["image"] = str(control_image)
    data["controlnets"] = units
    return GenerateRequest.create(**data)


def _number(fields: dict, key: str, kind: type) -> int | float:
    """An infotext field as a number, or a one-line error naming it (a hand-edited PNG may hold anything)."""
    value = fields[key]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return kind(value)
    try:
        return kind(str(value))
    except ValueError:
        raise InvalidRequest(f"the parameters' {key} is {str(value)[:50]!r}, not a number; cannot reproduce") from None


def run_reproduce(args: argparse.Namespace) -> int:
    import numpy as np

    from huabu.engine.images import load_image
    from huabu.core.pnginfo import parse_infotext, read_parameters

    original = load_image(str(args.file), "file")
    text = read_parameters(args.file)
    if not text:
        raise InvalidRequest(f"{args.file} has no A1111 parameters chunk to reproduce from")
    quiet_libraries()
    from huabu.engine.generate import Engine
    from huabu.engine.models import ModelManager

    settings = settings_from_args(args)
    models = ModelManager(settings)
    fields = parse_infotext(text)
    model = args.model or _model_from_infotext(models, fields)
    request = request_from_infotext(text, model, args.image, args.mask, args.control_image)
    if args.controlnet_model:
        if len(args.controlnet_model) > len(request.controlnets):
            raise InvalidRequest(f"{len(args.controlnet_model)} --controlnet-model for {len(request.controlnets)} "
                                 f"ControlNet unit(s) in the PNG")
        units = [unit.model_copy(update={"model": name}) for unit, name in zip(request.controlnets,
                                                                             args.controlnet_model)]
        request = request.model_copy(update={"controlnets": units + request.controlnets[len(units):]})
    result = Engine(settings, models).generate(request)
    if result.model.get("hash") and fields.get("Model hash") and result.model["hash"] != fields["Model hash"]:
        print(f"note: model hash is {result.model['hash']}, the file says {fields['Model hash']}", file=sys.stderr)
    remade = result.images[0]
    if remade.size != original.size:
        print(f"differs (size {remade.width}x{remade.height} vs {original.width}x{original.height})")
        return 1
    diff = int(np.abs(np.asarray(remade, dtype=np.int16) - np.asarray(original, dtype=np.int16)).max())
    if diff <= args.tolerance:
        print("match")
        return 0
    print(f"differs (max abs pixel difference {diff})")
    return 1


def _model_from_infotext(models, fields: dict) -> str:
    """The model an infotext names: by `Model` name, else by `Model hash` among the models folder."""
    from huabu.core.errors import ModelNotFound

    name, short = fields.get("Model"), fields.get("Model hash")
    if name:
        try:
            models.resolve(str(name))
            return str(name)
        except ModelNotFound:
            pass
    if short:
        found = models.find_by_hash(str(short))
        if found is not None:
            return found.location
    raise ModelNotFound(f"the model of this image ({name or '?'} [{short or '?'}]) is not the built-in one or in "
                        f"{models.settings.models_dir}; pass --model")


def register_png_info(sub: Subparsers) -> None:
    parser = sub.add_parser("png-info", help="print a PNG's generation parameters",
                            description="Print the A1111 `parameters` text stored in an image.")
    parser.add_argument("file", type=Path)
    parser.add_argument("--json", action="store_true",
                        help="print the parsed fields as JSON (ControlNet units as objects)")
    parser.set_defaults(handler=run_png_info)


def run_png_info(args: argparse.Namespace) -> int:
    from huabu.engine.images import load_image
    from huabu.core.pnginfo import read_parameters

    load_image(str(args.file), "file")  # one-line errors for missing / non-image files
    text = read_parameters(args.file)
    if not text:
        raise InvalidRequest(f"{args.file} has no generation parameters")
    if args.json:
        import json

        from huabu.core.control_infotext import PREFIX, parse_unit
        from huabu.core.pnginfo import parse_infotext

        fields = parse_infotext(text)
        for key, value in fields.items():
            if key.startswith(PREFIX) and isinstance(value, str):
                try:
                    fields[key] = parse_unit(value)
                except ValueError:
                    pass  # not the extension's format: keep the text
        print(json.dumps(fields, ensure_ascii=False, indent=1))
        return 0
    print(text)
    return 0


def register_history(sub: Subparsers) -> None:
    parser = sub.add_parser("history", help="search generated images by prompt text",
                            description="List generated images, newest first, optionally whose prompt contains TEXT.")
    parser.add_argument("text", nargs="?", help="text to find in prompts")
    parser.add_argument("--kind", help="txt2img, img2img, inpaint, ...")
    parser.add_argument("--limit", type=int, default=20)
    parser.set_defaults(handler=run_history)


def run_history(args: argparse.Namespace) -> int:
    import time

    from huabu.core.gallery import Gallery

    settings = settings_from_args(args)
    for item in Gallery(settings.gallery_db).search(args.text, kind=args.kind, limit=args.limit):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(item.created))
        prompt = item.prompt.replace("\n", " ")
        print(f"{item.id}\t{when}\t{item.kind}\t{item.path}\t{prompt}")
    return 0


# --- samplers / models ------------------------------------------------------------------------------------------

def register_samplers(sub: Subparsers) -> None:
    parser = sub.add_parser("samplers", help="list sampler names and schedule types",
                            description="A1111 sampler names huabu understands, the diffusers scheduler each uses, "
                                        "and the schedule types.")
    parser.set_defaults(handler=run_samplers)


def run_samplers(args: argparse.Namespace) -> int:
    from huabu.core.samplers import SAMPLERS, SCHEDULES

    width = max(len(s.name) for s in SAMPLERS)
    print("samplers (A1111 name, diffusers scheduler, what 'Automatic' means, aliases):")
    for s in SAMPLERS:
        aliases = ", ".join(s.aliases)
        note = f"  [{s.note}]" if s.note else ""
        print(f"  {s.name:<{width}}  {s.scheduler:<34} {s.default_schedule or 'model default':<13} {aliases}{note}")
    print("schedule types (also accepted as a suffix: 'DPM++ 2M Karras'):")
    for schedule in SCHEDULES:
        print(f"  {schedule.label:<{width}}  {', '.join(schedule.aliases)}")
    return 0


def register_models(sub: Subparsers) -> None:
    parser = sub.add_parser("models", help="list available models",
                            description="The built-in model and the models in the models folder.")
    parser.add_argument("--hash", action="store_true", help="also compute each model's A1111 hash (slow once)")
    parser.set_defaults(handler=run_models)


def run_models(args: argparse.Namespace) -> int:
    from huabu.engine.models import ModelManager, builtin_has_weights

    settings = settings_from_args(args)
    models = ModelManager(settings)
    print(f"models folder: {settings.models_dir}")
    for ref in models.list_models():
        if ref.kind == "builtin" and not builtin_has_weights():
            print(f"  {ref.name}  (built-in; no weights in this checkout yet)")
            continue
        digest = models.model_sha256(ref) if args.hash else None
        title = f"{ref.name} [{digest[:10]}]" if digest else ref.name
        print(f"  {title}  ({ref.kind})  {ref.location}")
    return 0


# --- train ------------------------------------------------------------------------------------------------------

def register_train(sub: Subparsers) -> None:
    parser = sub.add_parser("train", help="train add-ons for a model (LoRA, ...) on your images",
                            description="Train something on your own images; one stage per kind (huabu train lora).")
    stages = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for target in TRAIN_STAGES:
        module, _, function = target.partition(":")
        getattr(importlib.import_module(module), function)(stages)


if __name__ == "__main__":
    sys.exit(main())
