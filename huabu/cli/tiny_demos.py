"""`huabu tiny` steps of huabu-tiny's demonstrations: LoRA data, ControlNet / video / LoRA evaluations, and shipping
trained ControlNets and motion modules with the model. Evaluation options come from huabu.tiny.demo_configs'
dataclasses (the ControlNet training preset is a `huabu tiny train` stage). Import-light: handlers import the rest.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from huabu.cli.options import add_config_options, config_from_args
from huabu.tiny.demo_configs import (
    CONTROL_TYPES,
    ControlEvalConfig,
    EmbeddingEvalConfig,
    IpAdapterEvalConfig,
    LoraEvalConfig,
    TextEvalConfig,
    VideoEvalConfig,
)

_HELP = {
    "model": "a huabu-tiny-shaped diffusers folder or model name (default: the shipped huabu-tiny)",
    "controlnet": "a ControlNet folder for the one type in --types (default: the model's shipped ones)",
    "types": "comma-separated control types to measure",
    "prompt": "what the prompts say: objects (their names only; layout and colours must come from the control) or "
              "caption (the whole scene caption)",
    "singles": "held-out one-object prompts",
    "pairs": "held-out two-object prompts",
    "cfg": "CFG scale",
    "weight": "ControlNet conditioning scale",
    "seed": "prompt i uses seed SEED + i",
    "motion": "a MotionAdapter folder or file (default: the model's own motion_adapter/)",
    "clips": "held-out moving-scene prompts (every motion equally often)",
    "style": "the paper-cut style LoRA (.safetensors)",
    "subject": "the hbdragon subject LoRA (.safetensors)",
    "weights": "comma-separated LoRA weights (0 is always measured: the base)",
    "count": "held-out prompts (per LoRA)",
    "embedding": "the trained hbdragon.safetensors (huabu train embedding --token hbdragon)",
    "steps": "sampling steps",
    "frames": "frames per video",
    "grid": "also write a PNG of the first 8 prompts: real scenes, each type's control maps above its outputs, "
            "and the outputs without control",
}
_TEXT_HELP = {**_HELP, "controlnet": "the glyph ControlNet folder (default: the model's shipped one)",
              "count": "held-out strings, half Chinese, half Latin", "scene_seed": "which held-out strings and scenes",
              "grid": "also write a PNG of 4 Chinese and 4 Latin scenes: real renders, glyph maps, outputs with and "
                      "without the glyph unit",
              "lora": "a LoRA applied at weight 1 to every image, with and without the glyph unit",
              "hires": "above 0: each image made at half size, then the hires fix 2x at this denoising strength "
                       "(the glyph unit acts in both passes)",
              "hires_steps": "the hires fix's steps", "upscaler": "the hires fix's upscaler"}

_IP_HELP = {**_HELP, "count": "held-out scenes per row", "weight": "IP-Adapter weight",
            "scene_seed": "which held-out scenes and references",
            "adapter": "an IP-Adapter .safetensors file or a folder holding one, e.g. runs/ip-adapter/final "
                       "(default: the one huabu tiny ship-ip-adapter wrote)"}
_NOTES = {TextEvalConfig: _TEXT_HELP, IpAdapterEvalConfig: _IP_HELP}


def _add_device_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), help="default: auto")
    parser.add_argument("--dtype", choices=("auto", "fp32", "fp16", "bf16"), help="default: auto")
    parser.add_argument("--json", action="store_true", help="print one JSON line")


def register(tsub) -> None:
    """Add the demonstration steps to `huabu tiny`'s sub-parsers."""
    data = tsub.add_parser("lora-data", help="write LoRA data (img + txt): the paper-cut style, the hbdragon subject, "
                                             "or huabu-tiny's scenes at 128 px (large)")
    data.add_argument("kind", choices=("style", "subject", "large"))
    data.add_argument("--out", required=True, type=Path, help="folder to write (kohya layout: name.png + name.txt)")
    data.add_argument("--count", type=int, help="images (default: 160 style, 16 subject, 4000 large)")
    data.add_argument("--seed", type=int, help="default: 11 style, 0 subject, 7 large")
    data.set_defaults(handler=_lora_data)

    for name, cls, handler, text in (
            ("eval-control", ControlEvalConfig, _eval_control,
             "ControlNet fidelity on held-out prompts: edge F1 and colour-map error with vs without control"),
            ("eval-video", VideoEvalConfig, _eval_video,
             "motion-direction accuracy and frame consistency of held-out moving-scene prompts"),
            ("eval-lora", LoraEvalConfig, _eval_lora,
             "style and subject LoRAs at weights 0, 0.5, 1: distance to the target and prompt adherence"),
            ("eval-embedding", EmbeddingEvalConfig, _eval_embedding,
             "an hbdragon embedding on held-out prompts: dragon top-1 and adherence, with vs without it"),
            ("eval-text", TextEvalConfig, _eval_text,
             "words written by the glyph ControlNet on held-out strings: OCR sentence accuracy and NED, with vs "
             "without the glyph unit, beside the real renders"),
            ("eval-ip-adapter", IpAdapterEvalConfig, _eval_ip_adapter,
             "huabu-tiny's IP-Adapter on held-out scenes: identity top-1 from a reference image of the object "
             "elsewhere in another colour, background and position, with vs without it; seen and unseen glyphs")):
        parser = tsub.add_parser(name, help=text, description=text)
        add_config_options(parser, cls, _NOTES.get(cls, _HELP))
        _add_device_options(parser)
        parser.set_defaults(handler=handler, config_class=cls)

    ship = tsub.add_parser("ship-controlnet", help="write a trained ControlNet beside the model (fp16), where the "
                                                   "engine finds it for its module")
    ship.add_argument("run", type=Path, help="the training run folder (its final/ is shipped)")
    ship.add_argument("--type", required=True, choices=(*CONTROL_TYPES, "glyph"))
    ship.add_argument("--model", type=Path, help="the model folder (default: the shipped huabu-tiny)")
    ship.set_defaults(handler=_ship_controlnet)

    motion = tsub.add_parser("ship-motion", help="write a trained motion module into the model folder (fp16), "
                                                 "the model's default for video")
    motion.add_argument("run", type=Path, help="the training run folder (its final/ is shipped)")
    motion.add_argument("--model", type=Path, help="the model folder (default: the shipped huabu-tiny)")
    motion.set_defaults(handler=_ship_motion)
    _ship_ip_adapter_parser(tsub)


def _ship_ip_adapter_parser(tsub) -> None:
    ship = tsub.add_parser("ship-ip-adapter", help="write a trained huabu-tiny IP-Adapter (fp16, with its image "
                                                   "encoder) beside the model, where the engine finds it")
    ship.add_argument("run", type=Path, help="the training run folder (its final/ is shipped)")
    ship.add_argument("--out", type=Path, help="default: <model>-ip-adapter/ beside the model folder")
    ship.add_argument("--model", type=Path, help="the model it was trained on (default: the shipped huabu-tiny)")
    ship.set_defaults(handler=_ship_ip_adapter)


def _lora_data(args: argparse.Namespace) -> int:
    from huabu.tiny.lora_data import write_lora_data

    out = write_lora_data(args.kind, args.out, args.count, args.seed)
    print(f"{len(list(out.glob('*.png')))} {args.kind} images with captions in {out}")
    return 0


def _evaluate(args: argparse.Namespace, evaluate, report) -> int:
    from huabu.cli.options import quiet_libraries, settings_from_args

    config = config_from_args(args, args.config_class)
    quiet_libraries()
    result = evaluate(config, settings_from_args(args))
    print(json.dumps(result) if args.json else report(result))
    return 0


def _eval_control(args: argparse.Namespace) -> int:
    from huabu.tiny.eval_control import evaluate_control, format_control_report

    return _evaluate(args, evaluate_control, format_control_report)


def _eval_video(args: argparse.Namespace) -> int:
    from huabu.tiny.eval_video import evaluate_video, format_video_report

    return _evaluate(args, evaluate_video, format_video_report)


def _eval_lora(args: argparse.Namespace) -> int:
    from huabu.tiny.eval_lora import evaluate_lora, format_lora_report

    return _evaluate(args, evaluate_lora, format_lora_report)


def _eval_embedding(args: argparse.Namespace) -> int:
    from huabu.tiny.eval_embedding import evaluate_embedding, format_embedding_report

    return _evaluate(args, evaluate_embedding, format_embedding_report)


def _eval_text(args: argparse.Namespace) -> int:
    from huabu.tiny.eval_text import evaluate_text, format_text_report

    return _evaluate(args, evaluate_text, format_text_report)


def _eval_ip_adapter(args: argparse.Namespace) -> int:
    from huabu.tiny.eval_ip_adapter import evaluate_ip_adapter, format_ip_adapter_report

    return _evaluate(args, evaluate_ip_adapter, format_ip_adapter_report)


def _ship_ip_adapter(args: argparse.Namespace) -> int:
    from huabu.tiny.ship import BUILTIN_DIR, IP_ADAPTER_NAME, ip_adapter_folder, ship_ip_adapter

    model = args.model or BUILTIN_DIR
    out = ship_ip_adapter(args.run, args.out or ip_adapter_folder(model), model)
    print(f"shipped the IP-Adapter {IP_ADAPTER_NAME} in {out} ({_megabytes(out):.1f} MB); beside the model it needs "
          f"no name: --ip-adapter IMAGE")
    return 0


def _ship_controlnet(args: argparse.Namespace) -> int:
    from huabu.tiny.ship import BUILTIN_DIR, ship_controlnet

    out = ship_controlnet(args.run, args.type, args.model or BUILTIN_DIR)
    print(f"shipped the {args.type} ControlNet in {out} ({_megabytes(out):.1f} MB)")
    return 0


def _ship_motion(args: argparse.Namespace) -> int:
    from huabu.tiny.ship import BUILTIN_DIR, ship_motion

    out = ship_motion(args.run, args.model or BUILTIN_DIR)
    print(f"shipped the motion module in {out} ({_megabytes(out):.1f} MB)")
    return 0


def _megabytes(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
