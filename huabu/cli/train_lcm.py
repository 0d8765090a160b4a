"""`huabu train lcm`: distil a model into an LCM-LoRA for few-step sampling, one option per LcmTrainConfig field.

Import-light: the training module (torch, diffusers) is imported by the handler.
"""

from __future__ import annotations

from huabu.cli.options import add_training_command
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
    add_training_command(
        stages, "lcm", LcmTrainConfig, _HELP, "huabu.training.lcm:train",
        help="distil a model into an LCM-LoRA (4-step sampling with the LCM sampler)",
        description="Latent consistency distillation into a LoRA: the result samples in a few steps with "
                    "--sampler LCM --cfg 1. Resumes from the newest checkpoint in --out (Ctrl-C stops after writing "
                    "one); writes --out/final.safetensors and a LoRA every --sample-every steps.")
