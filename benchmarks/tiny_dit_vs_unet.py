"""huabu-tiny's UNet vs huabu-tiny-dit's transformer at their training presets: parameters, FLOPs of one training step
(forward + backward at the preset's batch, as torch.utils.flop_counter counts them) and of one sampling step of one
image (forward with and without the prompt, as classifier-free guidance runs it), and seconds a training step here.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tiny_dit_vs_unet.py [--repeats 3]

Random weights and inputs of the real shapes (16 x 16 latents, 77 CLIP tokens; the DiT trains on CLIP's 77 tokens plus
one standing for the pipeline's 256 zero T5 tokens, and samples on all 333)."""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextConfig

from huabu.tiny import scenes as S
from huabu.tiny.configs import DitTrainConfig, UnetTrainConfig
from huabu.tiny.train_dit import T5_TOKENS, build_transformer, padding_once, parameter_count
from huabu.tiny.train_unet import build_unet


def flops(run) -> int:
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def seconds(run, repeats: int) -> float:
    run()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    side, width = S.IMAGE_SIZE // 4, 128  # latent side; huabu-tiny's CLIP width
    unet_cfg, dit_cfg = UnetTrainConfig(), DitTrainConfig()
    unet = build_unet(unet_cfg, width)
    dit = build_transformer(dit_cfg, 4, CLIPTextConfig(hidden_size=width, projection_dim=width))

    def unet_call(batch: int):
        return unet(torch.randn(batch, 4, side, side), torch.randint(0, 1000, (batch,)),
                    encoder_hidden_states=torch.randn(batch, 77, width)).sample

    def dit_call(batch: int, context: int):
        return dit(hidden_states=torch.randn(batch, 4, side, side), timestep=torch.rand(batch) * 1000,
                   encoder_hidden_states=torch.randn(batch, context, 2 * width),
                   pooled_projections=torch.randn(batch, 2 * width)).sample

    def dit_train_step():
        with padding_once(dit):
            out = dit_call(dit_cfg.batch_size, 78)
        out.square().mean().backward()

    rows = {
        "UNet": (parameter_count(unet), lambda: unet_call(unet_cfg.batch_size).square().mean().backward(),
                 lambda: unet_call(2), unet_cfg.batch_size),
        "DiT": (parameter_count(dit), dit_train_step, lambda: dit_call(2, 77 + T5_TOKENS), dit_cfg.batch_size),
    }
    print("model  parameters  batch  train GFLOPs/step  s/step  sample GFLOPs/image-step")
    for name, (params, train_step, sample_step, batch) in rows.items():
        train_flops = flops(train_step)
        with torch.no_grad():
            sample_flops = flops(sample_step)
        step_seconds = seconds(train_step, args.repeats)
        print(f"{name:5s}  {params:10,d}  {batch:5d}  {train_flops / 1e9:17.1f}  {step_seconds:6.2f}"
              f"  {sample_flops / 1e9:24.2f}")


if __name__ == "__main__":
    main()
