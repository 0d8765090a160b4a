"""Seconds per LoRA training step: `huabu train lora`'s step function vs a bare diffusers + peft loop.

    .venv/bin/python benchmarks/lora_train_step.py [--model FOLDER | --random sd15] [--rank 8] [--batch 4] [--size 64]
                                                   [--repeats 7] [--steps 5] [--device cpu] [--threads N]

Both train the same model at the same rank and batch on the same images: huabu through `setup` + the training loop's
`optimizer_step`, the bare loop written out below the way diffusers' train_text_to_image_lora.py does it (peft LoRA
on to_q/k/v/out,
noise, timesteps, frozen text encoder, MSE to the noise, AdamW, gradient clipping). Both start from latents encoded
once (huabu caches them; the script's per-step VAE encode is timed separately, as a third figure). Runs are
interleaved, `--steps` steps at a time after one warm-up each; the medians and their ratio are printed. Without
--model it builds a random huabu-tiny-shaped model (64x64 images, f=4 VAE, cross-attention at every UNet level,
a width-128 CLIP text encoder) in a temporary folder.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def build_random_model(folder: Path) -> Path:
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from huabu.engine.bundled import CLIP_TOKENIZER_DIR

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(64, 128, 192), layers_per_block=1, sample_size=16, cross_attention_dim=128,
        down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=4)
    vae = AutoencoderKL(block_out_channels=[32, 64, 64], down_block_types=["DownEncoderBlock2D"] * 3,
                        up_block_types=["UpDecoderBlock2D"] * 3, latent_channels=4, norm_num_groups=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, vocab_size=49408, hidden_size=128,
        intermediate_size=512, num_attention_heads=4, num_hidden_layers=4, projection_dim=128))
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, scheduler=scheduler,
                            tokenizer=CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR), safety_checker=None,
                            feature_extractor=None, requires_safety_checker=False).save_pretrained(folder)
    return folder


def write_images(folder: Path, count: int, size: int) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a red paper cut of a dragon, number {i}")
    return folder


class BareLoop:
    """diffusers' LoRA recipe, written plainly."""

    def __init__(self, model: Path, rank: int, lr: float, device: str, latents, captions: list[str], batch: int):
        import torch
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from peft import LoraConfig
        from transformers import CLIPTextModel, CLIPTokenizer

        self.device, self.batch = device, batch
        self.scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
        self.text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder").to(device)
        tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
        self.unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet").to(device)
        self.unet.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        self.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                         target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
        self.params = [p for p in self.unet.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr)
        self.latents = latents
        self.ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                             return_tensors="pt").input_ids
        self.unet.train()

    def step(self, step: int) -> float:
        import torch
        import torch.nn.functional as F

        index = [(step * self.batch + i) % len(self.latents) for i in range(self.batch)]
        latents = torch.stack([self.latents[i] for i in index]).to(self.device)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(index),), device=self.device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        with torch.no_grad():
            hidden = self.text_encoder(self.ids[index].to(self.device), return_dict=False)[0]
        prediction = self.unet(noisy, timesteps, hidden, return_dict=False)[0]
        loss = F.mse_loss(prediction.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad()
        return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a diffusers SD 1.x/2.x folder (default: a random huabu-tiny-shaped one)")
    parser.add_argument("--random", choices=("sd15", "sd2-base"), help="a random model of this shape instead")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=64, help="training resolution")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()

    from huabu.cli.options import quiet_libraries

    quiet_libraries()
    import torch

    from huabu.core.lora_request import TrainLoraRequest
    from huabu.core.settings import Settings
    from huabu.training.loop import optimizer_step
    from huabu.training.lora import recipe, setup

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.random:
            from random_models import save_random_model

            model = save_random_model(args.random, tmp / args.random, torch.float32, args.device)
        else:
            model = Path(args.model) if args.model else build_random_model(tmp / "model")
        data = write_images(tmp / "data", args.images, args.size)
        settings = Settings.for_home(tmp / "home", device=args.device, dtype="fp32", hub_offline=True)
        request = TrainLoraRequest.create(data=str(data), out="bench", base=str(model), rank=args.rank,
                                          alpha=args.rank, batch=args.batch, resolution=args.size, steps=10**6)
        run = setup(request, settings)
        bare = BareLoop(model, args.rank, request.lr, run.accelerator.device, run.latents,
                        [e.caption for e in run.dataset.examples], args.batch)
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(model, subfolder="vae").to(run.accelerator.device)
        pixels = torch.randn(args.batch, 3, args.size, args.size, device=run.accelerator.device)

        def timed(fn, start: int) -> float:
            begin = time.perf_counter()
            for step in range(start, start + args.steps):
                fn(step)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return (time.perf_counter() - begin) / args.steps

        def encode(_step: int) -> None:
            with torch.no_grad():
                vae.encode(pixels).latent_dist.sample()

        lora, lrs = recipe(run), [group["lr"] for group in run.optimizer.param_groups]

        def train_step(step: int) -> None:
            optimizer_step(lora, step, lrs, request.max_grad_norm)

        timed(train_step, 0)
        timed(bare.step, 0)
        huabu_times, bare_times, encode_times = [], [], []
        for repeat in range(args.repeats):
            start = (repeat + 1) * args.steps
            huabu_times.append(timed(train_step, start))
            bare_times.append(timed(bare.step, start))
            encode_times.append(timed(encode, start))
    huabu_s, bare_s = statistics.median(huabu_times), statistics.median(bare_times)
    print(f"model {'random huabu-tiny-shaped' if not args.model else args.model}, {args.size}x{args.size}, rank "
          f"{args.rank}, batch {args.batch}, device {args.device}, {torch.get_num_threads()} threads, "
          f"{args.repeats} x {args.steps} interleaved steps")
    print(f"bare diffusers+peft  {bare_s:.4f} s/step")
    print(f"huabu train lora     {huabu_s:.4f} s/step")
    print(f"ratio huabu/bare     {huabu_s / bare_s:.3f}")
    print(f"(a per-step VAE encode, as the diffusers script does, would add {statistics.median(encode_times):.4f} "
          f"s/step; huabu encodes each image once)")


if __name__ == "__main__":
    main()
