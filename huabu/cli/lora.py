"""`huabu loras` (what is installed) and `huabu train lora` (options made from TrainLoraRequest's fields, so the
CLI and the Python API cannot drift)."""

from __future__ import annotations

import argparse
import sys
import typing

from huabu.core.lora_request import TrainLoraRequest


def register(sub) -> None:
    parser = sub.add_parser("loras", help="list installed LoRAs", description="The LoRAs in the LoRA folder "
                            "(~/.huabu/loras) with their A1111 hash, base model, rank/alpha and trigger words.")
    parser.add_argument("--json", action="store_true", help="one JSON list, as A1111's /sdapi/v1/loras")
    parser.set_defaults(handler=run_loras)


def run_loras(args: argparse.Namespace) -> int:
    import json

    from huabu.cli.options import settings_from_args
    from huabu.engine.lora_library import list_loras

    settings = settings_from_args(args)
    loras = list_loras(settings)
    if args.json:
        print(json.dumps([lora.to_a1111() for lora in loras], ensure_ascii=False))
        return 0
    print(f"LoRA folder: {settings.loras_dir}")
    for lora in loras:
        size = f"rank {lora.rank}/alpha {lora.alpha:g}" if lora.rank and lora.alpha is not None else "rank ?"
        base = " ".join(filter(None, [lora.base_model, f"({lora.base_model_version})" if lora.base_model_version
                                      else None])) or "base ?"
        words = f"  trigger: {', '.join(lora.trigger_words)}" if lora.trigger_words else ""
        print(f"  {lora.name} [{lora.short_hash}]  {lora.format}  {size}  {base}{words}")
    return 0


def register_train(stages) -> None:
    """`huabu train lora`: one option per TrainLoraRequest field."""
    parser = stages.add_parser(
        "lora", help="train a LoRA on a folder of images",
        description="Train a LoRA from images (with img.txt caption sidecars, or --caption-template and --trigger). "
                    "Resumable (--resume), multi-GPU with `accelerate launch -m huabu.cli.main train lora ...`. Ctrl-C "
                    "stops after writing a checkpoint.")
    for name, info in TrainLoraRequest.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = _plain_type(info.annotation)
        options: dict = {"dest": name, "help": info.description, "default": argparse.SUPPRESS}
        if kind is bool:
            options["action"] = "store_true"
        elif typing.get_origin(kind) is list:
            options.update(action="append", metavar="TEXT")
        elif typing.get_origin(kind) is typing.Literal:
            options["choices"] = typing.get_args(kind)
        else:
            options.update(type=kind, required=info.is_required())
        if info.default not in (None, False) and not info.is_required() and "default" not in info.description:
            options["help"] = f"{info.description} (default: {info.default})"
        parser.add_argument(flag, **options)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), help="default: auto")
    parser.add_argument("--allow-unsafe-pickle", action="store_true", help="allow a pickle .ckpt base model")
    parser.set_defaults(handler=run_train_lora)


def _plain_type(annotation):
    """`int | None` -> int; other annotations unchanged."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if type(None) in typing.get_args(annotation) and len(args) == 1:
        return args[0]
    return annotation


def run_train_lora(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from huabu.cli.options import quiet_libraries, settings_from_args
    from huabu.cli.stopping import stop_on_ctrl_c

    request = TrainLoraRequest.create(**{name: getattr(args, name) for name in TrainLoraRequest.model_fields
                                         if hasattr(args, name)})
    quiet_libraries()
    from huabu.training.lora import train_lora

    def update(p) -> None:  # the loop draws the progress bar
        if p.checkpoint is not None:
            tqdm.write(f"checkpoint: {p.checkpoint}", file=sys.stderr)

    with stop_on_ctrl_c() as stop:
        path = train_lora(request, settings_from_args(args), progress=update, cancel=stop)
    print(path)
    return 0
