"""`huabu generate / img2img / inpaint / reproduce / png-info / history`: still images, made, remade and found.

Handlers import torch and diffusers themselves, so registering these commands stays import-light.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from huabu.cli.options import (
    Subparsers,
    add_generation_options,
    add_hires_options,
    add_runtime_options,
    apply_fast_preset,
    control_units_from_args,
    ip_adapters_from_args,
    parse_lora,
    quiet_libraries,
    settings_from_args,
)
from huabu.core.errors import InvalidRequest

if TYPE_CHECKING:
    from huabu.core.requests import GenerateRequest


def request_from_args(args: argparse.Namespace, mode: str, script: dict | None = None) -> GenerateRequest:
    from huabu.core.requests import GenerateRequest

    apply_fast_preset(args)
    width, height = args.size if args.size else (None, None)
    fields = dict(mode=mode, prompt=args.prompt, negative_prompt=args.negative, styles=args.style, steps=args.steps,
                  cfg_scale=args.cfg, sampler=args.sampler, schedule_type=args.schedule, shift=args.shift,
                  seed=args.seed, width=width,
                  height=height, batch_size=args.batch, n_iter=args.n_iter, model=args.model,
                  checkpoint_config=args.checkpoint_config, vae=args.vae, clip_skip=args.clip_skip,
                  loras=[parse_lora(text) for text in args.lora], controlnets=control_units_from_args(args),
                  ip_adapters=ip_adapters_from_args(args), text_boxes=getattr(args, "text_box", []), script=script,
                  **_variation_fields(args),
                  **_hires_fields(args))
    if mode != "txt2img":
        fields.update(init_image=str(args.image), denoising_strength=args.strength)
    if mode == "inpaint":
        fields.update(mask_blur=args.mask_blur, **inpaint_fields(args))
        if getattr(args, "mask", None) is not None:
            fields["mask"] = str(args.mask)
        for side in ("left", "right", "up", "down"):
            fields[f"outpaint_{side}"] = getattr(args, side, 0)
    return GenerateRequest.create(**fields)


FILLS = ("fill", "original", "latent-noise", "latent-nothing")  # A1111's inpainting_fill 0-3


def add_inpaint_options(parser: argparse.ArgumentParser, fill: str = "original") -> None:
    parser.add_argument("--fill", choices=FILLS, default=fill,
                        help="what the masked area starts from: its surroundings' colours (fill), the image "
                             "(original), noise or nothing in latent space")
    parser.add_argument("--only-masked", action="store_true",
                        help="inpaint a crop around the mask at --size (default: the model's) and paste it back")
    parser.add_argument("--padding", type=int, default=32, help="pixels around the mask in the --only-masked crop")


def inpaint_fields(args: argparse.Namespace) -> dict:
    return dict(inpainting_fill=FILLS.index(args.fill), inpaint_full_res=args.only_masked,
                inpaint_full_res_padding=args.padding)


def _variation_fields(args: argparse.Namespace) -> dict:
    width, height = args.seed_resize_from or (0, 0)
    return dict(subseed=args.subseed, subseed_strength=args.subseed_strength, seed_resize_from_w=width,
                seed_resize_from_h=height)


def _hires_fields(args: argparse.Namespace) -> dict:
    scale, resize = getattr(args, "hires", None), getattr(args, "hires_resize", None)
    if scale is None and resize is None:
        return {}
    width, height = resize or (0, 0)
    return dict(enable_hr=True, hr_scale=scale or 2.0, hr_resize_x=width, hr_resize_y=height,
                hr_second_pass_steps=args.hires_steps, denoising_strength=args.denoise, hr_upscaler=args.upscaler,
                hr_sampler=args.hires_sampler, hr_prompt=args.hires_prompt, hr_negative_prompt=args.hires_negative)


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


def run_generation(args: argparse.Namespace, mode: str, script: dict | None = None) -> int:
    """Generate and save; `script` runs an A1111 script (huabu.engine.scripts) around the generation."""
    request = request_from_args(args, mode, script)  # validate before anything heavy is imported
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
    if getattr(args, "grid", False) and script is None and len(result.images) > 1:
        print(f"{save_batch_grid(result, args.output or settings.outputs_dir)}  (grid)")
    return 0


# --- generate / img2img / inpaint ----------------------------------------------------------------------------

def register_generate(sub: Subparsers) -> None:
    parser = sub.add_parser("generate", help="text to image", description="Generate images from a prompt.")
    add_generation_options(parser, prompt_optional=True)
    add_hires_options(parser)
    parser.add_argument("--from-file", type=Path, metavar="FILE",
                        help="one generation per line of FILE: a prompt, or A1111's `--prompt \"...\" --steps 10` "
                             "options (added to PROMPT when both are given)")
    parser.add_argument("--prompt-matrix", action="store_true",
                        help="A1111's prompt matrix: one image per combination of the |-separated parts, and a grid")
    parser.add_argument("--grid", action="store_true", help="also save a grid of all images (A1111's grid)")
    parser.set_defaults(handler=lambda args: run_generation(args, "txt2img", generate_script(args)))


def generate_script(args: argparse.Namespace) -> dict | None:
    """The A1111 script `huabu generate` runs, if any (--from-file, --prompt-matrix)."""
    if args.from_file and args.prompt_matrix:
        raise InvalidRequest("use --from-file or --prompt-matrix, not both")
    if args.from_file:
        try:
            text = args.from_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise InvalidRequest(f"--from-file {args.from_file}: cannot read it ({err.__class__.__name__})") from None
        return {"name": "prompts from file or textbox", "args": {"text": text}}
    return {"name": "prompt matrix", "args": {}} if args.prompt_matrix else None


def register_img2img(sub: Subparsers) -> None:
    parser = sub.add_parser("img2img", help="image to image", description="Repaint an image guided by a prompt.")
    add_generation_options(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", type=Path, help="input image")
    source.add_argument("--input-dir", type=Path, help="every image in this folder (A1111's batch tab)")
    parser.add_argument("--output-dir", type=Path, help="with --input-dir: where the results go, named as their "
                                                        "inputs (default: the outputs folder)")
    parser.add_argument("--mask-dir", type=Path, help="with --input-dir: masks named as the images (inpaints)")
    parser.add_argument("--strength", type=float, default=0.75, help="denoising strength 0..1 (0 keeps the image)")
    parser.add_argument("--grid", action="store_true", help="also save a grid of all images (A1111's grid)")
    parser.set_defaults(handler=run_img2img)


def run_img2img(args: argparse.Namespace) -> int:
    return run_generation(args, "img2img") if args.input_dir is None else run_batch(args)


def register_inpaint(sub: Subparsers) -> None:
    parser = sub.add_parser("inpaint", help="repaint the masked part of an image",
                            description="Repaint where the mask is white; keep where it is black.")
    add_generation_options(parser)
    parser.add_argument("--image", type=Path, required=True, help="input image")
    parser.add_argument("--mask", type=Path, required=True, help="mask image of the same size: white = repaint")
    parser.add_argument("--strength", type=float, default=0.75, help="denoising strength 0..1")
    parser.add_argument("--mask-blur", type=int, default=4, help="soften the mask edge when pasting back (pixels)")
    parser.add_argument("--grid", action="store_true", help="also save a grid of all images (A1111's grid)")
    add_inpaint_options(parser)
    parser.set_defaults(handler=lambda args: run_generation(args, "inpaint"))


def register_outpaint(sub: Subparsers) -> None:
    parser = sub.add_parser("outpaint", help="extend an image beyond its borders",
                            description="Grow the canvas by the given pixels on each side and paint the new border "
                                        "to continue the picture; the original pixels are kept as they are.")
    add_generation_options(parser)
    parser.add_argument("--image", type=Path, required=True, help="input image")
    for side in ("left", "right", "up", "down"):
        parser.add_argument(f"--{side}", type=int, default=0, metavar="PIXELS", help=f"pixels to add {side}")
    parser.add_argument("--strength", type=float, default=0.9, help="denoising strength 0..1 of the new border")
    parser.add_argument("--mask-blur", type=int, default=4, help="soften the seam, on the new side only (pixels)")
    add_inpaint_options(parser, fill="fill")
    parser.set_defaults(handler=lambda args: run_generation(args, "inpaint"))


def run_batch(args: argparse.Namespace) -> int:
    """img2img (inpaint with --mask-dir) of every image in --input-dir; each result is saved in --output-dir under
    its input's name (`name.png`, `name-1.png` ... for several per input), with its infotext."""
    from huabu.core.pnginfo import save_png_atomic
    from huabu.engine.scripts.batch import folder_script

    images, script = folder_script(args.input_dir, args.mask_dir)
    args.image = images[0]  # the request's own input: each run replaces it
    request = request_from_args(args, "img2img", script)
    quiet_libraries()
    from huabu.engine.generate import Engine

    settings = settings_from_args(args)
    update, close = progress_bars()
    try:
        result = Engine(settings).generate(request, progress=update)
    finally:
        close()
    folder = args.output_dir or settings.outputs_dir
    folder.mkdir(parents=True, exist_ok=True)
    per_image = request.batch_size * request.n_iter
    for index, (image, infotext, seed) in enumerate(zip(result.images, result.infotexts, result.seeds)):
        source, k = images[index // per_image], index % per_image
        path = save_png_atomic(image, folder / f"{source.stem}{f'-{k}' if k else ''}.png", infotext)
        print(f"{path}  (seed {seed})")
    if args.grid and len(result.images) > 1:
        print(f"{save_batch_grid(result, folder)}  (grid)")
    return 0


def save_batch_grid(result, folder: Path) -> Path:
    """A grid of a generation's images with the first image's infotext, as A1111 saves `grid-0000.png`."""
    from huabu.engine.grids import batch_grid
    from huabu.engine.scripts.common import save_grid

    return save_grid(batch_grid(result.images), result.infotexts[0], Path(folder), "grid")


# --- reproduce / png-info / history ------------------------------------------------------------------------

def register_reproduce(sub: Subparsers) -> None:
    parser = sub.add_parser("reproduce", help="regenerate a PNG from its parameters and compare",
                            description="Regenerate an image from its A1111 `parameters` chunk alone and compare the "
                                        "pixels: prints `match` (exit 0) or `differs (max abs pixel difference N)` "
                                        "(exit 1).")
    parser.add_argument("file", type=Path)
    parser.add_argument("--image", type=Path, help="source image, for files made by img2img/inpaint")
    parser.add_argument("--mask", type=Path, help="mask, for files made by inpaint (and apps given one)")
    parser.add_argument("--reference", type=Path, help="reference image, for files made by the try-on and "
                                                       "instant-id apps")
    parser.add_argument("--sam", metavar="FOLDER", help="the SAM folder, for replace outputs segmented with SAM")
    parser.add_argument("--control-image", type=Path, action="append", default=[], metavar="IMAGE",
                        help="the image of each ControlNet unit (IP-Adapter ones too), in order (repeatable; PNGs "
                             "do not store them); img2img/inpaint units without one use --image")
    parser.add_argument("--controlnet-model", action="append", default=[], metavar="NAME_OR_PATH",
                        help="the ControlNet of each unit, in order, when the one the PNG names is not in "
                             "~/.huabu/controlnet")
    parser.add_argument("--tolerance", type=int, default=0, help="largest pixel difference still called a match")
    add_runtime_options(parser)
    parser.set_defaults(handler=run_reproduce)


def request_from_infotext(text: str, model: str | None, image: Path | None, mask: Path | None,
                          control_images: list[Path] | None = None) -> GenerateRequest:
    """A GenerateRequest that remakes the image an A1111 infotext describes, read through the field table
    (huabu.core.fields); the model spec is given separately, and the ControlNet units' images in order, as PNGs do
    not hold them."""
    from huabu.core.control_infotext import units_in_params
    from huabu.core.fields import infotext_mode, infotext_to_request_fields, missing_keys
    from huabu.core.ip_adapters import is_ip_adapter_module
    from huabu.core.pnginfo import parse_infotext
    from huabu.core.requests import GenerateRequest
    from huabu.core.text_boxes import GLYPH

    parsed = parse_infotext(text)
    missing = missing_keys(parsed)
    if missing:
        raise InvalidRequest(f"the parameters lack {', '.join(missing)}; cannot reproduce")
    mode = infotext_mode(parsed)
    if mode != "txt2img" and image is None:
        raise InvalidRequest(f"this image was made by {mode}; its source image is not stored in the PNG: pass it "
                             f"with --image{' and --mask' if mode == 'inpaint' else ''}")
    if mode == "inpaint" and mask is None and "Outpaint" not in parsed:
        raise InvalidRequest("this image was made by inpaint: pass its mask with --mask")
    data = infotext_to_request_fields(parsed)
    data.update(mode=mode, model=model)
    if mode != "txt2img":
        data["init_image"] = str(image)
    if mode == "inpaint" and "Outpaint" not in parsed:
        data["mask"] = str(mask)
    # The units in the infotext's order (IP-Adapter units are ControlNet units there, as sd-webui-controlnet writes).
    controlnets, ip_adapters = iter(data.get("controlnets", [])), iter(data.get("ip_adapters", []))
    units = [next(ip_adapters if is_ip_adapter_module(unit.get("module")) else controlnets)
             for unit in units_in_params(parsed)]
    units = [unit for unit in units if unit.get("module") != GLYPH]  # drawn again from the `Text boxes` field
    control_images = list(control_images or [])
    if len(control_images) > len(units) or (mode == "txt2img" and len(control_images) < len(units)):
        raise InvalidRequest(f"this image was made with {len(units)} ControlNet unit(s); pass the image of each with "
                             f"--control-image, in order (got {len(control_images)})")
    for unit, control_image in zip(units, control_images):
        unit["image"] = str(control_image)
    return GenerateRequest.create(**data)


def run_reproduce(args: argparse.Namespace) -> int:
    from huabu.core.apps import REPRODUCIBLE
    from huabu.core.fields import infotext_values
    from huabu.core.pnginfo import parse_infotext, read_parameters
    from huabu.engine.images import load_image

    original = load_image(str(args.file), "file")
    text = read_parameters(args.file)
    if not text:
        raise InvalidRequest(f"{args.file} has no A1111 parameters chunk to reproduce from")
    quiet_libraries()
    from huabu.engine.generate import Engine
    from huabu.engine.models import ModelManager

    settings = settings_from_args(args)
    models = ModelManager(settings)
    parsed = parse_infotext(text)
    stated = infotext_values(parsed, errors=[])  # bad values are reported by request_from_infotext
    model = args.model or _model_from_infotext(models, stated.get("model"), stated.get("model_hash"))
    if stated.get("app") in REPRODUCIBLE:  # an app output: the app runs again on the same inputs
        from huabu.engine.apps import run_app
        from huabu.engine.apps.reproduce import app_request_from_infotext

        app = app_request_from_infotext(parsed, model, {"image": args.image, "mask": args.mask,
                                                        "reference": args.reference}, args.sam)
        return _compare(original, run_app(Engine(settings, models), app).images[0], args.tolerance)
    request = request_from_infotext(text, model, args.image, args.mask, args.control_image)
    if args.controlnet_model:
        if len(args.controlnet_model) > len(request.controlnets):
            raise InvalidRequest(f"{len(args.controlnet_model)} --controlnet-model for {len(request.controlnets)} "
                                 f"ControlNet unit(s) in the PNG")
        units = [unit.model_copy(update={"model": name}) for unit, name in zip(request.controlnets,
                                                                             args.controlnet_model)]
        request = request.model_copy(update={"controlnets": units + request.controlnets[len(units):]})
    result = Engine(settings, models).generate(request)
    recorded = stated.get("model_hash")
    if result.model.get("hash") and recorded and result.model["hash"] != recorded:
        print(f"note: model hash is {result.model['hash']}, the file says {recorded}", file=sys.stderr)
    return _compare(original, result.images[0], args.tolerance)


def _compare(original, remade, tolerance: int) -> int:
    """Print `match` (0) or how the remade image differs (1)."""
    import numpy as np

    if remade.size != original.size:
        print(f"differs (size {remade.width}x{remade.height} vs {original.width}x{original.height})")
        return 1
    diff = int(np.abs(np.asarray(remade, dtype=np.int16) - np.asarray(original, dtype=np.int16)).max())
    if diff <= tolerance:
        print("match")
        return 0
    print(f"differs (max abs pixel difference {diff})")
    return 1


def _model_from_infotext(models, name: str | None, short: str | None) -> str:
    """The model an infotext names: by its `Model` name, else by its `Model hash` among the models folder."""
    from huabu.core.errors import ModelNotFound

    if name:
        try:
            models.resolve(name)
            return name
        except ModelNotFound:
            pass
    if short:
        found = models.find_by_hash(short)
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
    from huabu.core.pnginfo import read_parameters
    from huabu.engine.images import load_image

    load_image(str(args.file), "file")  # one-line errors for missing / non-image files
    text = read_parameters(args.file)
    if not text:
        raise InvalidRequest(f"{args.file} has no generation parameters")
    if args.json:
        import json

        from huabu.core.fields import readable_params
        from huabu.core.pnginfo import parse_infotext

        print(json.dumps(readable_params(parse_infotext(text)), ensure_ascii=False, indent=1))
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
