"""`huabu preprocess MODULE IMAGE -o out.png`: make a ControlNet control image from a reference image.

Import-light: huabu.engine.control (OpenCV, torch) is imported by the handler, not at registration.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from huabu.core.atomic import atomic_file, atomic_path
from huabu.core.errors import InvalidRequest

# Preprocessor options with a CLI flag of the same name. Only flags the user gave are passed, so a flag the module
# does not take is a one-line error from huabu.engine.control.preprocess rather than silently ignored.
_OPTIONS = ("low", "high", "resolution", "weights", "safe", "cell", "mode", "depth_map", "invert", "keypoints",
            "allow_unsafe_pickle")
# Modules that fall back to weights found in <huabu home>/controlnet/annotators when --weights is not given.
_ANNOTATOR_DEFAULTS = {"softedge": "softedge_hed", "softedge_hed": "softedge_hed", "pose": "pose"}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `huabu preprocess`."""
    parser = subparsers.add_parser(
        "preprocess", help="make a ControlNet control image (canny, softedge, depth, pose, color, glyph)",
        description="Turn a reference image into a ControlNet control image. Modules: canny, softedge (HED with "
                    "weights, else gradients), softedge_hed, softedge_gradient, depth, pose, pose_json, color, none; "
                    "glyph draws words (--text, --box) instead of reading an image.")
    parser.add_argument("module", help="canny | softedge | depth | pose | color | glyph (also softedge_hed, "
                                       "softedge_gradient, pose_json, none)")
    parser.add_argument("image", nargs="?", help="reference image (optional for pose --keypoints and depth "
                                                 "--depth-map)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write the control image")
    parser.add_argument("--resolution", type=int, help="processor resolution: scale the short side to this many "
                                                       "pixels first (default: keep the image size)")
    parser.add_argument("--low", type=float, help="canny low threshold (default 100)")
    parser.add_argument("--high", type=float, help="canny high threshold (default 200)")
    parser.add_argument("--weights", help="HED or OpenPose weights (.safetensors), or a depth model folder / hub "
                                          "id; default for HED/pose: <huabu home>/controlnet/annotators")
    parser.add_argument("--allow-unsafe-pickle", action="store_true",
                        help="accept pickle .pth weights (read with torch.load(weights_only=True)); only for files "
                             "you trust")
    parser.add_argument("--safe", action="store_true", help="softedge: quantise to a few levels")
    parser.add_argument("--cell", type=int, help="color: grid cell size in pixels (default 1/8 of the short side)")
    parser.add_argument("--mode", choices=("grid", "blur"), help="color: grid cells (default) or a blur")
    parser.add_argument("--depth-map", help="depth: your own grayscale depth image (near = bright) instead of a model")
    parser.add_argument("--invert", action="store_true", help="depth: the depth map is far = bright")
    parser.add_argument("--keypoints", help="pose: draw this OpenPose JSON file instead of detecting")
    parser.add_argument("--save-keypoints", type=Path, metavar="JSON",
                        help="pose: also write the detected keypoints as OpenPose JSON (to edit and redraw)")
    parser.add_argument("--text", action="append", default=[], help="glyph: a word to draw (repeatable)")
    parser.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1",
                        help="glyph: the box of the i-th --text, in pixels (repeatable; words without one are laid "
                             "out across the middle)")
    parser.add_argument("--font", help="glyph: a .ttf/.otf/.ttc font (default: a CJK font found by fontconfig)")
    parser.add_argument("--size", metavar="WxH", help="glyph: the map's size without an image (default 512x512)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), help="where networks run (default: auto)")
    parser.set_defaults(handler=run_preprocess)


def _options(args: argparse.Namespace, takes: tuple[str, ...]) -> dict:
    # Identity checks: `0.0 in (None, False)` is true, which would drop `--low 0`.
    options = {name: value for name in _OPTIONS
               if (value := getattr(args, name)) is not None and value is not False}
    if args.device is not None or "device" in takes:
        from huabu.engine.devices import resolve_device

        options["device"] = resolve_device(args.device or "auto")
    return options


def _default_weights(module: str, options: dict) -> None:
    """Fill in annotator weights from the huabu home when the user named none (and is not drawing keypoints)."""
    kind = _ANNOTATOR_DEFAULTS.get(module)
    if kind is None or "weights" in options or "keypoints" in options:
        return
    from huabu.core.settings import Settings
    from huabu.engine.control.weights import find_annotator_weights

    found = find_annotator_weights(Settings.from_env().controlnet_dir / "annotators", kind,
                                   options.get("allow_unsafe_pickle", False))
    if found is not None:
        options["weights"] = found


def save_image_atomic(image, path: Path) -> Path:
    """Write `image` in the format its extension names, via a temp file in the same folder and os.replace."""
    from PIL import Image

    path = Path(path).expanduser()
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise InvalidRequest(f"cannot tell the image format from {path.name!r}; use a .png (or .jpg/.webp) name")
    with atomic_file(path) as f:
        image.save(f, format=image_format)
    return path


def _save_text_atomic(text: str, path: Path) -> None:
    with atomic_path(Path(path).expanduser()) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _glyph_options(args: argparse.Namespace) -> dict:
    from huabu.cli.options import parse_size
    from huabu.core.text_boxes import parse_box

    try:
        boxes = [parse_box(text) for text in args.box]
        width, height = parse_size(args.size) if args.size else (None, None)
    except (ValueError, argparse.ArgumentTypeError) as err:
        raise InvalidRequest(str(err)) from None
    return {"texts": args.text, "boxes": boxes, "font": args.font, "width": width, "height": height}


def run_preprocess(args: argparse.Namespace) -> int:
    from huabu.engine.control.pose import detect_poses
    from huabu.engine.control.registry import get_preprocessor, preprocess
    from huabu.engine.control.skeleton import draw_poses, keypoints_to_json
    from huabu.engine.images import load_image

    preprocessor = get_preprocessor(args.module)
    module = preprocessor.name
    image = load_image(args.image, "reference image") if args.image else None
    options = _options(args, preprocessor.options)
    _default_weights(module, options)
    if module == "glyph":
        options.update(_glyph_options(args))
    elif args.text or args.box or args.font or args.size:
        raise InvalidRequest("--text, --box, --font and --size are options of the glyph module")
    if args.save_keypoints is not None:
        extra = sorted(set(options) - {"weights", "resolution", "allow_unsafe_pickle", "device"})
        if module != "pose" or "weights" not in options or extra:
            raise InvalidRequest("--save-keypoints works with pose detection only (pose with --weights, without "
                                 + (f"--{extra[0].replace('_', '-')})" if extra else "--keypoints)"))
        poses = detect_poses(image, **options)
        result = draw_poses(poses)
        _save_text_atomic(keypoints_to_json(poses), args.save_keypoints)
    else:
        result = preprocess(module, image, **options)
    print(save_image_atomic(result, args.output))
    return 0
