"""Stage 2 of huabu-tiny: an f=4 AutoencoderKL (64x64x3 <-> 16x16x4), SD's VAE shape at a fraction of its size.

The objects cover a small part of each scene, so a plain pixel loss spends the model on flat backgrounds and blurs
the glyphs into unrecognisable blobs. Object pixels are therefore weighted up, and an image-gradient term keeps
edges; identity surviving the round trip is what bounds the whole model's identity accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import AutoencoderKL
from PIL import Image

from huabu.core.atomic import atomic_path
from huabu.tiny import scenes as S
from huabu.tiny.configs import VaeTrainConfig
from huabu.tiny.data import load_dataset
from huabu.training import loop
from huabu.training.captioned_arrays import CaptionedArrays
from huabu.training.diffusion import to_tensor
from huabu.training.loop import Plan, Recipe, Sampled, StepOutput, same_run
from huabu.training.schedules import Schedule


def build_vae(cfg: VaeTrainConfig) -> AutoencoderKL:
    n = len(cfg.channels)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=cfg.channels,
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         layers_per_block=cfg.layers_per_block, norm_num_groups=min(32, cfg.channels[0]),
                         sample_size=S.IMAGE_SIZE)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def object_mask(images: np.ndarray, backgrounds: list[str]) -> torch.Tensor:
    """1 where a pixel differs from the scene's flat background colour (the backgrounds are exactly one colour)."""
    bg = np.stack([S.COLOURS[b] for b in backgrounds]).astype(np.uint8)[:, None, None, :]
    return torch.from_numpy(np.any(images != bg, axis=-1)).float()[:, None]


def crop_batch(images: np.ndarray, attrs: list[dict], crop: int, rng: np.random.Generator) -> np.ndarray:
    """Crops around an object of each scene (the VAE is convolutional, and a 32x32 crop costs a quarter of the full
    image on a CPU); offsets are multiples of 4 so crops stay aligned with the f=4 latent grid."""
    out = np.empty((len(images), crop, crop, 3), np.uint8)
    size = images.shape[1]
    for i, (image, a) in enumerate(zip(images, attrs)):
        k = rng.integers(len(a["positions"]))
        obj_size = S.SIZES[a["sizes"][k]] if a["sizes"][k] else S.PAIR_SIZE
        cx, cy = np.add(S.anchor_xy(a["positions"][k], obj_size), obj_size // 2) + rng.integers(-12, 13, size=2)
        x0 = int(np.clip(cx - crop // 2, 0, size - crop)) // 4 * 4
        y0 = int(np.clip(cy - crop // 2, 0, size - crop)) // 4 * 4
        out[i] = image[y0 : y0 + crop, x0 : x0 + crop]
    return out


def gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def eval_images() -> np.ndarray:
    """Held-out scenes (single and pairs) as one fixed evaluation batch."""
    scenes = S.eval_single_scenes(48) + S.eval_pair_scenes(16)
    return np.stack([S.render(s.background, s.objects) for s in scenes])


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: np.ndarray, device: torch.device, batch: int = 64) -> np.ndarray:
    out = []
    for i in range(0, len(images), batch):
        x = to_tensor(images[i : i + batch]).to(device)
        out.append(to_uint8(vae.decode(vae.encode(x).latent_dist.mode()).sample))
    return np.concatenate(out)


def save_grid(rows: list, path: Path, cols: int = 16, scale: int = 1) -> None:
    """Stack equally long image lists as rows of one PNG (e.g. originals above reconstructions), written atomically
    and enlarged `scale` times with nearest-neighbour so 64x64 scenes stay readable."""
    grid = np.concatenate([np.concatenate(list(r[:cols]), axis=1) for r in rows], axis=0)
    image = Image.fromarray(grid)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


class RoundTrip(torch.nn.Module):
    """encode -> sample -> decode as one forward, so that accelerate/DDP sees (and syncs) a single module call."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(x).latent_dist
        recon = self.vae.decode(posterior.mean + posterior.std * noise).sample
        return recon, posterior.kl().mean()


def setup(cfg: VaeTrainConfig) -> tuple[Recipe, AutoencoderKL, CaptionedArrays]:
    """The VAE, its optimizer, and the loss of a step (weighted pixel error, edges, a little KL)."""
    accelerator = Accelerator()
    torch.manual_seed(cfg.seed)
    data = load_dataset(Path(cfg.data))
    vae = build_vae(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    model, opt = accelerator.prepare(RoundTrip(vae), opt)
    device = accelerator.device
    held_out = eval_images()

    def step_loss(step: int) -> StepOutput:
        rng = np.random.default_rng([cfg.seed, step])  # data and noise are functions of the step: resumes identically
        idx = np.sort(rng.choice(len(data), size=cfg.batch_size, replace=False))
        images = data.images[idx]
        if step < cfg.crop_steps:
            images = crop_batch(images, [data.attrs[i] for i in idx], cfg.crop, rng)
        x = to_tensor(images).to(device)
        weight = 1.0 + (cfg.object_weight - 1.0) * object_mask(images, [data.attrs[i]["background"] for i in idx])
        weight = weight.to(device)
        latent = (len(idx), 4, images.shape[1] // 4, images.shape[2] // 4)
        noise = torch.randn(latent, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + step))
        recon, kl = model(x, noise.to(device))
        err = (recon - x).abs() + (recon - x).square()
        pixel_loss = (err * weight).mean()
        (gx, gy), (tx, ty) = gradients(recon), gradients(x)
        grad_loss = (gx - tx).abs().mean() + (gy - ty).abs().mean()
        loss = pixel_loss + cfg.gradient_weight * grad_loss + cfg.kl_weight * kl
        return loss, {"pixel": pixel_loss.detach(), "grad": grad_loss.detach(), "kl": kl.detach()}

    def sample(done: int) -> Sampled:
        recon = reconstruct(vae, held_out, device)
        path = Path(cfg.out) / f"samples-{done:07d}.png"
        save_grid([held_out, recon], path)
        return Sampled((path,), {"psnr": psnr(held_out, recon)})

    return Recipe(accelerator, opt, {"vae": vae}, step_loss, list(model.parameters()), sample=sample), vae, data


def train(cfg: VaeTrainConfig, cancel: Callable[[], bool] | None = None) -> dict[str, float]:
    """Train (or resume) the VAE stage; returns its held-out PSNR and latent scale.
    `cancel()` turning true stops the run after a step, with a checkpoint to resume from."""
    recipe, vae, data = setup(cfg)
    plan = Plan(Path(cfg.out), min(cfg.steps, cfg.stop_after), Schedule("cosine", cfg.warmup, cfg.steps, floor=0.05),
                same_run(cfg), cfg.batch_size * recipe.accelerator.num_processes, cfg.checkpoint_every,
                sample_every=cfg.sample_every, log_every=50, config=asdict(cfg), desc="vae")
    loop.train(recipe, plan, cancel=cancel)
    device = recipe.accelerator.device
    scale = latent_scale(vae, data, device)
    vae.register_to_config(scaling_factor=scale)
    vae.save_pretrained(Path(cfg.out) / "final")
    held_out = eval_images()
    return {"psnr": psnr(held_out, reconstruct(vae, held_out, device)), "scaling_factor": scale}


@torch.no_grad()
def latent_scale(vae: AutoencoderKL, data: CaptionedArrays, device: torch.device, n: int = 2048) -> float:
    """1 / std of the latents, as SD sets its scaling_factor (0.18215), so the UNet sees unit-variance latents."""
    n = min(n, len(data))
    idx = np.sort(np.random.default_rng(0).choice(len(data), size=n, replace=False))
    latents = [vae.encode(to_tensor(data.images[idx[i : i + 256]]).to(device)).latent_dist.mode()
               for i in range(0, n, 256)]
    return float(1.0 / torch.cat(latents).std())
