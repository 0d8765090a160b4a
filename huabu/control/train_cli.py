"""`huabu train controlnet`: one option per ControlNetTrainConfig field, so the CLI and the Python API agree.

Import-light: the training module (torch, diffusers) is imported by the handler.
"""

from __future__ import annotations

import argparse
import dataclasses

from huabu.control.train_config import ControlNetTrainConfig

_HELP = {
    "type": "preprocessor that makes each control map: canny, color, softedge_gradient, ...",
    "base": "frozen base model: huabu-tiny, a diffusers folder, a .safetensors file or a name in the models folder",
    "data": "scene dataset folder (made by `huabu tiny data`)",
    "latents": "cached VAE latents of the same dataset and VAE (e.g. runs/unet/latents.npy)",
    "caption_dropout": "share of empty captions",
    "snr_gamma": "min-SNR loss weighting gamma (0 = off)",
    "embedding_channels": "control-image embedding channels, comma-separated; n of them shrink by 2**(n-1), which "
                          "must be the VAE factor (default: 16,32,64 for f=4, 16,32,96,256 for f=8)",
    "samples": "(control, output) pairs per sample grid",
}


def _channels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


def register_train(stages) -> None:
    parser = stages.add_parser(
        "controlnet", help="train a ControlNet for a model on a scene dataset",
        description="Train a ControlNet (canny, color, ...) on a frozen base model; control maps are made from each "
                    "image on the fly. Resumes from the newest checkpoint in --out; writes --out/final (a diffusers "
                    "folder) and sample grids.")
    for field in dataclasses.fields(ControlNetTrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = _channels if field.name == "embedding_channels" else type(field.default)
        shown = ",".join(map(str, field.default)) if isinstance(field.default, tuple) else field.default
        note = _HELP.get(field.name, "")
        parser.add_argument(flag, dest=field.name, type=kind, default=argparse.SUPPRESS,
                            help=f"{note} (default: {shown if shown != '' else '-'})".lstrip())
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--allow-unsafe-pickle", action="store_true", help="allow a pickle .ckpt base model")
    parser.set_defaults(handler=run_train_controlnet)


def run_train_controlnet(args: argparse.Namespace) -> int:
    from huabu.cli import quiet_libraries, settings_from_args

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ControlNetTrainConfig) if hasattr(args, f.name)}
    config = ControlNetTrainConfig(**values)
    quiet_libraries()
    import torch

    from huabu.control.train import train_controlnet

    if args.threads:
        torch.set_num_threads(args.threads)
    print(train_controlnet(config, settings=settings_from_args(args)))
    return 0
