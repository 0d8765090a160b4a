"""Stage 3 of huabu-tiny: the text-conditioned UNet, trained on VAE latents under the frozen CLIP text encoder.

SD 1.x's recipe at toy scale: epsilon prediction on the scaled-linear DDPM schedule, 10% caption dropout for
classifier-free guidance, min-SNR loss weighting, EMA weights for sampling. Latents are encoded once up front
(`encode_latents`), because at 64x64 the VAE costs more per image than the UNet does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.training_utils import compute_snr
from tqdm import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from huabu.core.errors import InvalidRequest
from huabu.tiny import scenes as S
from huabu.tiny.configs import UnetTrainConfig
from huabu.tiny.data import load_dataset
from huabu.tiny.denoiser_stage import Trainables, check_captions, stage_captions, trainables
from huabu.training import loop
from huabu.training.diffusion import CAPTION_DROPOUT, encode_text, noise_scheduler, to_tensor
from huabu.training.loop import Plan, Recipe, Sampled, same_run
from huabu.training.schedules import Schedule


def build_unet(cfg: UnetTrainConfig, cross_attention_dim: int) -> UNet2DConditionModel:
    n = len(cfg.channels)
    return UNet2DConditionModel(
        sample_size=S.IMAGE_SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=cfg.channels, down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n, cross_attention_dim=cross_attention_dim,
        attention_head_dim=cfg.heads, norm_num_groups=32)


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


def sample_prompts() -> list[str]:
    scenes = S.eval_single_scenes(12) + S.eval_pair_scenes(4)
    return [s.caption for s in scenes]


def base_folder(base: str, option: str = "--base") -> Path:
    """The diffusers folder a model name or path names (e.g. the built-in huabu-tiny); `option` is the flag that
    named it, for the error."""
    from huabu.core.settings import Settings
    from huabu.engine.models import ModelManager

    ref = ModelManager(Settings.from_env()).resolve(base)
    if ref.path is None or not (ref.path / "text_encoder").is_dir():
        raise InvalidRequest(f"{option} {base} is not a huabu-tiny-shaped diffusers folder (vae, text_encoder, "
                             f"tokenizer)")
    return ref.path


def frozen_parts(cfg: UnetTrainConfig) -> tuple[CLIPTokenizer, CLIPTextModel, AutoencoderKL]:
    """The tokenizer, text encoder and VAE the UNet trains under: the CLIP and VAE stages' (`--clip`, `--vae`) or
    a base model's (`--base`), fp32 and frozen."""
    if cfg.base:
        base = base_folder(cfg.base)
        clip, tokenizer, vae = base / "text_encoder", base / "tokenizer", base / "vae"
    else:
        clip, tokenizer, vae = Path(cfg.clip), Path(cfg.clip), Path(cfg.vae)
    text_encoder = CLIPTextModel.from_pretrained(clip, dtype=torch.float32)
    vae_model = AutoencoderKL.from_pretrained(vae, dtype=torch.float32)
    return (CLIPTokenizer.from_pretrained(tokenizer), text_encoder.eval().requires_grad_(False),
            vae_model.eval().requires_grad_(False))


def setup(cfg: UnetTrainConfig) -> tuple[Recipe, Trainables, CLIPTokenizer]:
    """The UNet and its EMA copy over cached VAE latents (with `--text-lr`, the text encoder beside it), the
    optimizer, and the loss of a step."""
    check_captions(cfg.captions, cfg.text_lr)
    accelerator = Accelerator()
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(Path(cfg.data))
    tok, text_encoder, vae = frozen_parts(cfg)
    n_images = min(cfg.images, len(data))
    latents = encode_latents(vae, data.images[:n_images], out / "latents.npy")
    raw_unet = build_unet(cfg, text_encoder.config.hidden_size)
    parts = trainables(accelerator, "unet", raw_unet, text_encoder, tok, cfg.lr, cfg.text_lr,
                       data.captions_in("zh") if cfg.captions != "en" else [])
    device = accelerator.device
    sched = noise_scheduler()

    def step_loss(step: int) -> torch.Tensor:
        texts = stage_captions(data, cfg.captions, cfg.seed, step)
        captions, x0, noise, gen = latent_batch(cfg.seed, step, latents, texts, n_images, cfg.batch_size)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(x0),), generator=gen)
        xt = sched.add_noise(x0, noise, t).to(device)
        with torch.set_grad_enabled(cfg.text_lr > 0):
            cond = encode_text(tok, parts.text_encoder, captions)
        pred = parts.denoiser(xt, t.to(device), encoder_hidden_states=cond).sample
        snr = compute_snr(sched, t)
        weight = (torch.minimum(snr, torch.full_like(snr, cfg.snr_gamma)) / snr).to(device)
        return (F.mse_loss(pred, noise.to(device), reduction="none").mean(dim=(1, 2, 3)) * weight).mean()

    def sample(done: int) -> Sampled:
        path = out / f"samples-{done:07d}.png"
        write_samples(parts.ema, tok, parts.ema_text, vae, path)
        return Sampled((path,))

    return parts.recipe(accelerator, step_loss, cfg.ema_decay, sample), parts, tok


def train(cfg: UnetTrainConfig, cancel: Callable[[], bool] | None = None) -> Path:
    """Train (or resume) the UNet stage; returns the EMA weights' folder.
    `cancel()` turning true stops the run after a step, with a checkpoint to resume from."""
    recipe, parts, tok = setup(cfg)
    # Warm-up, then constant: with EMA weights doing the averaging, a run stopped at step N is exactly the run
    # configured for N steps, so `--steps` can be raised or lowered after the fact.
    plan = Plan(Path(cfg.out), cfg.steps, Schedule("constant", cfg.warmup), same_run(cfg),
                cfg.batch_size * recipe.accelerator.num_processes, cfg.checkpoint_every,
                sample_every=cfg.sample_every, log_every=50, config=asdict(cfg), desc="unet")
    loop.train(recipe, plan, cancel=cancel)
    final = Path(cfg.out) / "final"
    parts.ema.save_pretrained(final)
    if cfg.text_lr > 0:  # the encoder and tokenizer this UNet was trained with, for assembly
        parts.ema_text.save_pretrained(final / "text_encoder")
        tok.save_pretrained(final / "tokenizer")
    return final


@torch.no_grad()
def write_samples(unet: UNet2DConditionModel, tok: CLIPTokenizer, text_encoder: CLIPTextModel,
                  vae: AutoencoderKL, path: Path, steps: int = 20, cfg_scale: float = 5.0) -> None:
    """A grid of held-out prompts (fixed seeds) sampled with the standard diffusers pipeline."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet,
                                   scheduler=DDIMScheduler.from_config(noise_scheduler().config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    write_grid(pipe, path, steps, cfg_scale)


def latent_batch(seed: int, step: int, latents: np.ndarray, captions: list[str], count: int, batch_size: int
                 ) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Generator]:
    """Batch `step` over the first `count` cached latents: its captions (CAPTION_DROPOUT of them empty), latents,
    noise, and the generator the stage draws its timesteps from. All are functions of (seed, step), so a resumed
    run continues exactly as the uninterrupted one would have."""
    rng = np.random.default_rng([seed, step])
    idx = np.sort(rng.choice(count, size=batch_size, replace=False))
    chosen = ["" if rng.random() < CAPTION_DROPOUT else captions[i] for i in idx]
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    x0 = torch.from_numpy(latents[idx].astype(np.float32))
    return chosen, x0, torch.randn(x0.shape, generator=gen), gen


def write_grid(pipe, path: Path, steps: int = 20, cfg_scale: float = 5.0) -> None:
    """The sample prompts (fixed seeds) through any text-to-image diffusers pipeline, in one row."""
    from huabu.tiny.train_vae import save_grid

    pipe.set_progress_bar_config(disable=True)
    prompts = sample_prompts()
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    images = pipe(prompts, num_inference_steps=steps, guidance_scale=cfg_scale, generator=gens,
                  output_type="np").images
    save_grid([(images * 255).round().astype(np.uint8)], path, cols=len(prompts))
