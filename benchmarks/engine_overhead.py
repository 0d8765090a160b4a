"""Images per second: huabu's Engine.generate vs a bare diffusers pipeline call, same model, sampler, steps, size, seed.

    .venv/bin/python benchmarks/engine_overhead.py [--model PATH | --random sd15|sdxl] [--steps 20] [--size 64]
                                                   [--repeats 7] [--fast] [--device cuda --dtype fp16]
                                                   [--dtype bf16] [--compile]

Runs are interleaved (bare, engine, bare, engine, ...) after one warm-up each, so machine load affects both alike;
the median of each is reported with their ratio. Without --model it uses huabu-tiny, or, while its weights are
absent, a random SD-shaped model (f=4 VAE, 64x64) built in a temporary folder; --random builds one of a real
model's shape from huabu's bundled configs (benchmarks/random_models.py). --fast times huabu-tiny's 4-step preset
(the huabu-tiny-lcm LoRA, LCM sampler, CFG 1); --compile compiles the UNet both calls share (Settings.compile), in
the uncounted warm-up round. Beside the rates it prints the FLOP limit: the UNet's FLOPs per
image (counted by torch's FlopCounterMode) against the device's measured matrix-multiply rate.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def build_random_model(folder: Path) -> Path:
    """A random SD-1.x-shaped pipeline the size of huabu-tiny's plan (64x64 images, 16x16x4 latents)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from huabu.engine.bundled import CLIP_TOKENIZER_DIR

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(64, 128, 128), layers_per_block=1, sample_size=16, cross_attention_dim=128,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=4)
    vae = AutoencoderKL(block_out_channels=[32, 64, 64], down_block_types=["DownEncoderBlock2D"] * 3,
                        up_block_types=["UpDecoderBlock2D"] * 3, latent_channels=4, norm_num_groups=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, vocab_size=49408, hidden_size=128,
        intermediate_size=512, num_attention_heads=4, num_hidden_layers=4, projection_dim=128))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder,
                                   tokenizer=CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR), scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model spec (default: huabu-tiny, else a random model)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sampler", default="DPM++ 2M Karras")
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--random", choices=("sd15", "sd2-base", "sdxl"), help="a random model of this shape")
    parser.add_argument("--fast", action="store_true", help="huabu-tiny-lcm LoRA, LCM sampler, 4 steps, CFG 1")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (compiled while warming up)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()

    from huabu.cli.options import quiet_libraries

    quiet_libraries()
    import torch

    from huabu.core import samplers
    from huabu.core.requests import GenerateRequest
    from huabu.core.settings import Settings
    from huabu.engine.devices import resolve_device
    from huabu.engine.generate import Engine
    from huabu.engine.models import builtin_has_weights
    from huabu.engine.samplers import build_scheduler

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fast:
        args.sampler, args.steps, args.cfg = "LCM", 4, 1.0
    workdir = Path(tempfile.mkdtemp(prefix="huabu-bench-"))
    engine = Engine(Settings.for_home(workdir / "home", device=args.device, dtype=args.dtype,
                                       compile=args.compile))
    if args.random:
        from random_models import save_random_model

        device = str(resolve_device(args.device))
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        model = str(save_random_model(args.random, workdir / args.random, dtype, device))
    else:
        model = args.model or ("huabu-tiny" if builtin_has_weights() else str(build_random_model(workdir / "random")))
    prompt, negative = "a red apple on a blue background", "blurry"
    loras = [{"name": "huabu-tiny-lcm"}] if args.fast else []
    request = GenerateRequest.create(prompt=prompt, negative_prompt=negative, steps=args.steps, width=args.size,
                                     height=args.size, seed=1234, batch_size=args.batch, sampler=args.sampler,
                                     cfg_scale=args.cfg, model=model, loras=loras)
    loaded = engine.models.load(model)
    pipe = loaded.pipeline  # the bare call runs on the very same modules
    sampler, schedule = samplers.canonical_names(args.sampler)
    pipe.scheduler = build_scheduler(sampler, schedule, loaded.scheduler_config)

    def bare() -> None:
        generators = [torch.Generator("cpu").manual_seed(1234 + i) for i in range(args.batch)]
        pipe(prompt, negative_prompt=negative, num_inference_steps=args.steps, guidance_scale=args.cfg,
             height=args.size, width=args.size, num_images_per_prompt=args.batch, generator=generators)

    def huabu() -> None:
        engine.generate(request)

    timings: dict[str, list[float]] = {"diffusers": [], "huabu": []}
    for run in range(args.repeats + 1):
        for name, call in (("diffusers", bare), ("huabu", huabu)):
            start = time.perf_counter()
            call()
            if run:  # the first round warms caches up and is not counted
                timings[name].append(time.perf_counter() - start)

    rate = {name: args.batch / statistics.median(values) for name, values in timings.items()}
    print(f"model {loaded.name} ({loaded.ref.kind}), device {pipe.device}, {args.sampler}, {args.steps} steps, "
          f"{args.size}x{args.size}, batch {args.batch}, {args.repeats} interleaved repeats, torch threads "
          f"{torch.get_num_threads()}, {pipe.unet.dtype}{', compiled' if args.compile else ''}")
    for name in ("diffusers", "huabu"):
        spread = f"{min(timings[name]):.3f}-{max(timings[name]):.3f} s"
        print(f"  {name:<9} {rate[name]:8.3f} images/s  (median of {len(timings[name])}, range {spread})")
    print(f"  huabu / diffusers = {rate['huabu'] / rate['diffusers']:.3f}")
    flops = unet_flops_per_image(pipe, args)
    peak = matmul_rate(pipe.device, pipe.unet.dtype)
    limit = peak / (flops * args.steps)
    print(f"  FLOP limit {limit:8.3f} images/s  (UNet {flops / 1e9:.2f} GFLOP an image a step, matrix multiply "
          f"{peak / 1e9:.0f} GFLOP/s); huabu at {rate['huabu'] / limit:.0%} of it")


def unet_flops_per_image(pipe, args) -> float:
    """FLOPs of the UNet for one image and one step (both halves of classifier-free guidance when CFG > 1)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    unet = pipe.unet
    side = args.size // pipe.vae_scale_factor
    batch = 2 if args.cfg > 1 else 1
    sample = torch.randn(batch, unet.config.in_channels, side, side, device=pipe.device, dtype=unet.dtype)
    hidden = torch.randn(batch, 77, unet.config.cross_attention_dim, device=pipe.device, dtype=unet.dtype)
    extra = {}
    if unet.config.addition_embed_type == "text_time":  # SDXL's pooled text and size conditioning
        pooled = pipe.text_encoder_2.config.projection_dim
        extra = {"added_cond_kwargs": {"text_embeds": torch.randn(batch, pooled, device=pipe.device, dtype=unet.dtype),
                                       "time_ids": torch.zeros(batch, 6, device=pipe.device, dtype=unet.dtype)}}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:  # forward: the eager code, compiled or not
        unet.forward(sample, torch.tensor([500] * batch, device=pipe.device), hidden, **extra)
    return float(counter.get_total_flops())


def matmul_rate(device, dtype, repeats: int = 10) -> float:
    """Matrix-multiply FLOP/s on this device and dtype: the ceiling a UNet's convolutions and attention aim at."""
    import torch

    size = 8192 if device.type == "cuda" else 2048  # a GPU needs a large product to reach its rate
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
