"""`huabu train lcm`: distil a model into an LCM-LoRA for few-step sampling, one option per LcmTrainConfig field.

Import-light: the training module (torch, diffusers) is imported by the handler.
"""

from __future__ import annotations

import argparse

from huabu.cli.options import add_config_options, config_from_args
from huabu.training.lcm_config import LcmTrainConfig

_HELP = {
    "teacher": "the model distilled: huabu-tiny or a diffusers folder of an SD 1.x-shaped model",
    "data": "captioned images in the array layout of `huabu tiny data`",
    "ddim_steps": "the teacher's DDIM grid; the student learns to jump one interval of it",
    "guidance_min": "lowest teacher CFG scale drawn per image",
    "guidance_max": "highest teacher CFG scale drawn per image",
    "huber_c": "pseudo-Huber loss constant",
}


def register_train(stages) -> None:
    parser = stages.add_parser(
        "lcm", help="distil a model into an LCM-LoRA (4-step sampling with the LCM sampler)",
        description="Latent consistency distillation into a LoRA: the result samples in a few steps with "
                    "--sampler LCM --cfg 1. Resumes from the newest checkpoint in --out (Ctrl-C stops after writing "
                    "one); writes --out/final.safetensors and a LoRA every --sample-every steps.")
    add_config_options(parser, LcmTrainConfig, _HELP)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.set_defaults(handler=run_train_lcm)


def run_train_lcm(args: argparse.Namespace) -> int:
    from huabu.cli.options import quiet_libraries

    config = config_from_args(args, LcmTrainConfig)
    quiet_libraries()
    import torch

    from huabu.cli.stopping import stop_on_ctrl_c
    from huabu.training.lcm import train

    if args.threads:
        torch.set_num_threads(args.threads)
    with stop_on_ctrl_c() as stop:
        print(train(config, cancel=stop.is_set))
    return 0
