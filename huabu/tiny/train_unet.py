"""Stage 3 of huabu-tiny: the text-conditioned UNet, trained on VAE latents under the frozen CLIP text encoder.

SD 1.x's recipe at toy scale: epsilon prediction on the scaled-linear DDPM schedule, 10% caption dropout for
classifier-free guidance, min-SNR loss weighting, EMA weights for sampling. Latents are encoded once up front
(`encode_latents`), because at 64x64 the VAE costs more per image than the UNet does.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import compute_snr
from tqdm import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from huabu.tiny import scenes as S
from huabu.tiny.configs import CAPTION_DROPOUT, UnetTrainConfig
from huabu.tiny.data import load_dataset
from huabu.tiny.train_vae import to_tensor
from huabu.training.checkpoint import load_latest, save_checkpoint


def build_unet(cfg: UnetTrainConfig, cross_attention_dim: int) -> UNet2DConditionModel:
    n = len(cfg.channels)
    return UNet2DConditionModel(
        sample_size=S.IMAGE_SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=cfg.channels, down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n, cross_attention_dim=cross_attention_dim,
        attention_head_dim=cfg.heads, norm_num_groups=32)


def noise_scheduler() -> DDPMScheduler:
    """SD 1.x's training schedule."""
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type="epsilon", clip_sample=False, steps_offset=1)


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: np.ndarray, out_path: Path, batch: int = 256) -> np.ndarray:
    """Scaled VAE latent means for every image, cached as float16 .npy (written atomically)."""
    if out_path.is_file():
        cached = np.load(out_path, mmap_mode="r")
        if cached.shape[0] == len(images):
            return cached
    tmp = out_path.with_suffix(".partial.npy")
    side = S.IMAGE_SIZE // 4
    latents = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(images), 4, side, side))
    scale = vae.config.scaling_factor
    for i in tqdm(range(0, len(images), batch), desc="encoding latents", mininterval=2.0):
        z = vae.encode(to_tensor(images[i : i + batch])).latent_dist.mode() * scale
        latents[i : i + batch] = z.numpy().astype(np.float16)
    latents.flush()
    del latents
    tmp.replace(out_path)
    return np.load(out_path, mmap_mode="r")


def encode_text(tok: CLIPTokenizer, text_encoder: CLIPTextModel, captions: list[str]) -> torch.Tensor:
    """The conditioning SD pipelines compute: last hidden state of 77-token, EOS-padded prompts. Call it under
    torch.no_grad() unless something in the encoder learns (motion training's word rows)."""
    ids = tok(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


def lr_at(step: int, cfg: UnetTrainConfig) -> float:
    """Linear warm-up, then constant: with EMA weights doing the averaging, a run stopped at step N is exactly the
    run configured for N steps, so `--steps` can be raised or lowered after the fact."""
    if cfg.warmup <= 0:
        return cfg.lr
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, step: int, max_decay: float) -> None:
    # Warm-up decay as diffusers' EMAModel uses, so early EMA weights are not stuck near the random init.
    decay = min(max_decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)


def sample_prompts() -> list[str]:
    scenes = S.eval_single_scenes(12) + S.eval_pair_scenes(4)
    return [s.caption for s in scenes]


def train(cfg: UnetTrainConfig) -> Path:
    accelerator = Accelerator()
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(Path(cfg.data))
    tok = CLIPTokenizer.from_pretrained(cfg.clip)
    text_encoder = CLIPTextModel.from_pretrained(cfg.clip).eval().requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(cfg.vae).eval().requires_grad_(False)
    n_images = min(cfg.images, len(data))
    latents = encode_latents(vae, data.images[:n_images], out / "latents.npy")
    unet = build_unet(cfg, text_encoder.config.hidden_size)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.01)
    state = load_latest(out / "checkpoints", {"unet": unet, "ema": ema}, {"opt": opt})
    start = state["step"] if state else 0
    unet, opt = accelerator.prepare(unet, opt)
    text_encoder.to(accelerator.device)
    ema.to(accelerator.device)
    sched = noise_scheduler()
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    log = open(out / "log.jsonl", "a")
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="unet", disable=not accelerator.is_main_process)
    t0, seen = time.time(), 0
    for step in bar:
        # Data, caption dropout, timesteps and noise are all functions of (seed, step): a resumed run continues
        # exactly as the uninterrupted one would have.
        rng = np.random.default_rng([cfg.seed, step])
        idx = np.sort(rng.choice(n_images, size=cfg.batch_size, replace=False))
        captions = ["" if rng.random() < CAPTION_DROPOUT else data.captions[i] for i in idx]
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        x0 = torch.from_numpy(latents[idx].astype(np.float32))
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=gen)
        xt = sched.add_noise(x0, noise, t).to(accelerator.device)
        with torch.no_grad():
            cond = encode_text(tok, text_encoder, captions)
        pred = unet(xt, t.to(accelerator.device), encoder_hidden_states=cond).sample
        snr = compute_snr(sched, t)
        weight = (torch.minimum(snr, torch.full_like(snr, cfg.snr_gamma)) / snr).to(accelerator.device)
        loss = (F.mse_loss(pred, noise.to(accelerator.device), reduction="none").mean(dim=(1, 2, 3)) * weight).mean()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        update_ema(ema, accelerator.unwrap_model(unet), step, cfg.ema_decay)
        seen += len(idx)
        bar.set_postfix(loss=f"{loss.item():.4f}", ips=f"{seen / (time.time() - t0):.0f}")
        done = step + 1
        if done % 50 == 0:
            log.write(json.dumps({"step": done, "loss": loss.item(), "images_per_s": seen / (time.time() - t0)}) + "\n")
            log.flush()
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            save_checkpoint(out / "checkpoints", done, {"unet": accelerator.unwrap_model(unet), "ema": ema}, {"opt": opt})
        if done % cfg.sample_every == 0 or done == cfg.steps:
            write_samples(ema, tok, text_encoder, vae, out / f"samples-{done:07d}.png")
    ema.save_pretrained(out / "final")
    return out / "final"


@torch.no_grad()
def write_samples(unet: UNet2DConditionModel, tok: CLIPTokenizer, text_encoder: CLIPTextModel,
                  vae: AutoencoderKL, path: Path, steps: int = 20, cfg_scale: float = 5.0) -> None:
    """A grid of held-out prompts (fixed seeds) sampled with the standard diffusers pipeline."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from huabu.tiny.train_vae import save_grid

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet,
                                   scheduler=DDIMScheduler.from_config(noise_scheduler().config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompts = sample_prompts()
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    images = pipe(prompts, num_inference_steps=steps, guidance_scale=cfg_scale, generator=gens,
                  output_type="np").images
    save_grid([(images * 255).round().astype(np.uint8)], path, cols=len(prompts))
