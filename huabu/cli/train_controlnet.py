"""`huabu train controlnet`: one option per ControlNetTrainConfig field, so the CLI and the Python API agree.

Import-light: the training module (torch, diffusers) is imported by the handler.
"""

from __future__ import annotations

import argparse

from huabu.cli.options import add_config_options, config_from_args
from huabu.training.controlnet_config import ControlNetTrainConfig

_HELP = {
    "type": "preprocessor that makes each control map: canny, color, softedge_gradient, ...",
    "base": "frozen base model: huabu-tiny, a diffusers folder, a .safetensors file or a name in the models folder",
    "data": "scene dataset folder (made by `huabu tiny data`)",
    "latents": "cached VAE latents of the same dataset and VAE (e.g. runs/unet/latents.npy)",
    "init": "a diffusers ControlNet folder (safetensors) to start from instead of the base UNet's encoder, e.g. to "
            "train a shipped ControlNet further; its step count and optimizer start afresh",
    "caption_dropout": "share of empty captions",
    "snr_gamma": "min-SNR loss weighting gamma (0 = off)",
    "embedding_channels": "control-image embedding channels, comma-separated; n of them shrink by 2**(n-1), which "
                          "must be the VAE factor (default: 16,32,64 for f=4, 16,32,96,256 for f=8)",
    "samples": "(control, output) pairs per sample grid",
}


def register_train(stages) -> None:
    parser = stages.add_parser(
        "controlnet", help="train a ControlNet for a model on a scene dataset",
        description="Train a ControlNet (canny, color, ...) on a frozen base model; control maps are made from each "
                    "image on the fly. Resumes from the newest checkpoint in --out (Ctrl-C stops after writing one); "
                    "writes --out/final (a diffusers folder) and sample grids.")
    add_config_options(parser, ControlNetTrainConfig, _HELP)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--allow-unsafe-pickle", action="store_true", help="allow a pickle .ckpt base model")
    parser.set_defaults(handler=run_train_controlnet)


def run_train_controlnet(args: argparse.Namespace) -> int:
    from huabu.cli.options import quiet_libraries, settings_from_args

    config = config_from_args(args, ControlNetTrainConfig)
    quiet_libraries()
    import torch

    from huabu.cli.stopping import stop_on_ctrl_c
    from huabu.training.controlnet import train_controlnet

    if args.threads:
        torch.set_num_threads(args.threads)
    with stop_on_ctrl_c() as stop:
        print(train_controlnet(config, settings=settings_from_args(args), cancel=stop.is_set))
    return 0
