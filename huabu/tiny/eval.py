"""`huabu tiny eval`: how well a huabu-tiny-shaped model follows held-out prompts, with the ceilings it can reach.

Prompts come from combinations never seen in training (object-colour-position triples, object pairs) and are
generated at fixed seeds, so two runs of the same model print the same figures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from huabu.tiny import measure as M
from huabu.tiny import scenes as S

TINY_DIR = Path(__file__).parent / "huabu-tiny"
SCORER_DIR = Path(__file__).parent / "huabu-tiny-scorer"


@dataclass
class EvalSettings:
    model: Path = TINY_DIR
    scorer: Path = SCORER_DIR
    steps: int = 20
    cfg_scale: float = 5.0
    singles: int = 200
    pairs: int = 100
    batch: int = 25
    grid: Path | None = None  # where to write a PNG of real held-out scenes above the generated ones
    sampler: str = "DPM++ 2M"  # an A1111 sampler name; DPM++ 2M keeps the model's own sigmas, as always measured
    lora: Path | None = None  # a LoRA fused at weight 1 (an LCM-LoRA, say)
    dtype: str = "fp32"  # or "bf16": what the denoising runs in (the VAE round trip and scorer stay fp32)


class ClipScorer:
    """Our CLIP: the pipeline's text encoder plus the shipped vision tower and the two projections."""

    def __init__(self, model_dir: Path, scorer_dir: Path) -> None:
        from safetensors.torch import load_file
        from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

        self.tokenizer = CLIPTokenizer.from_pretrained(model_dir / "tokenizer")
        self.text = CLIPTextModel.from_pretrained(model_dir / "text_encoder", dtype=torch.float32).eval()
        self.vision = CLIPVisionModelWithProjection.from_pretrained(scorer_dir, dtype=torch.float32).eval()
        self.text_projection = load_file(str(scorer_dir / "text_projection.safetensors"))["weight"].float()

    @torch.no_grad()
    def image_embeds(self, images: list[np.ndarray]) -> torch.Tensor:
        px = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        return torch.cat([self.vision(pixel_values=px[i : i + 100]).image_embeds for i in range(0, len(px), 100)])

    @torch.no_grad()
    def text_embeds(self, captions: list[str]) -> torch.Tensor:
        ids = self.tokenizer(
            captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
        return self.text(ids).pooler_output @ self.text_projection.T

    def clip_score(self, images: list[np.ndarray], captions: list[str]) -> float:
        """Mean of 100 * max(cos, 0), the usual CLIPScore scale."""
        cos = F.cosine_similarity(self.image_embeds(images), self.text_embeds(captions))
        return float((100 * cos.clamp(min=0)).mean())


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two embedding sets (FID's formula, in our CLIP space)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr(sqrt(A B)) from the eigenvalues of A B, which are real and >= 0 for covariance matrices (up to noise).
    eig = np.linalg.eigvals(cov_a @ cov_b)
    covmean_trace = np.sqrt(np.clip(eig.real, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * covmean_trace)


def load_pipeline(model: Path, sampler: str = "DPM++ 2M", lora: Path | None = None, dtype: str = "fp32"):
    """huabu-tiny's pipeline, or any diffusers text-to-image folder of its scenes' size (huabu-tiny-dit's SD3 one,
    whose absent T5 diffusers wants passed as None), with `sampler`."""
    from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler

    from huabu.core.samplers import is_flow_config
    from huabu.engine.samplers import build_scheduler

    index = json.loads((Path(model) / "model_index.json").read_text(encoding="utf-8"))
    absent = {name: None for name, spec in index.items() if spec == [None, None]}
    pipe = DiffusionPipeline.from_pretrained(model, dtype=torch.float32, local_files_only=True, **absent)
    config = dict(pipe.scheduler.config)
    if sampler == "DPM++ 2M" and not is_flow_config(config):  # the README's UNet figures: the model's own sigmas
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(config)
    else:
        pipe.scheduler = build_scheduler(sampler, None, config)
    if lora is not None:
        pipe.load_lora_weights(str(lora))
        pipe.fuse_lora()
    if dtype == "bf16":
        pipe.to(dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompts: list[str], settings: EvalSettings, seed_offset: int = 0) -> list[np.ndarray]:
    images = []
    for i in range(0, len(prompts), settings.batch):
        chunk = prompts[i : i + settings.batch]
        gens = [torch.Generator().manual_seed(seed_offset + i + k) for k in range(len(chunk))]
        out = pipe(chunk, num_inference_steps=settings.steps, guidance_scale=settings.cfg_scale, generator=gens,
                   output_type="np").images
        images.extend((out * 255).round().astype(np.uint8))
    return images


@torch.no_grad()
def vae_round_trip(vae, images: list[np.ndarray]) -> list[np.ndarray]:
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    y = vae.decode(vae.encode(x).latent_dist.mode()).sample
    return list(((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())


def psnr(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    mse = np.mean((np.stack(a).astype(np.float64) - np.stack(b).astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def evaluate(settings: EvalSettings) -> dict[str, object]:
    """All figures of `huabu tiny eval` as one dict (the keys of its --json line)."""
    singles = S.eval_single_scenes(settings.singles)
    pairs = S.eval_pair_scenes(settings.pairs)
    real_singles = [S.render(s.background, s.objects) for s in singles]
    real_pairs = [S.render(s.background, s.objects) for s in pairs]
    pipe = load_pipeline(Path(settings.model), settings.sampler, settings.lora, settings.dtype)
    gen_singles = generate(pipe, [s.caption for s in singles], settings)
    gen_pairs = generate(pipe, [s.caption for s in pairs], settings, seed_offset=len(singles))
    vae_singles = vae_round_trip(pipe.vae.float(), real_singles)
    if settings.grid is not None:
        from huabu.tiny.train_vae import save_grid

        save_grid([real_singles[:12] + real_pairs[:4], gen_singles[:12] + gen_pairs[:4]], Path(settings.grid), scale=2)
    result: dict[str, object] = dict(M.score_singles(gen_singles, singles))
    result["pair_accuracy"] = M.score_pairs(gen_pairs, pairs)
    scorer = ClipScorer(Path(settings.model), Path(settings.scorer))
    captions = [s.caption for s in singles + pairs]
    result["clip_score"] = scorer.clip_score(gen_singles + gen_pairs, captions)
    result["clip_score_real"] = scorer.clip_score(real_singles + real_pairs, captions)
    result["fd_clip"] = frechet_distance(scorer.image_embeds(gen_singles + gen_pairs).numpy(),
                                         scorer.image_embeds(real_singles + real_pairs).numpy())
    result["vae_psnr"] = psnr(real_singles, vae_singles)
    result["ceiling_real"] = M.score_singles(real_singles, singles)
    result["ceiling_vae"] = M.score_singles(vae_singles, singles)
    result["pair_accuracy_real"] = M.score_pairs(real_pairs, pairs)
    result["settings"] = {"steps": settings.steps, "cfg_scale": settings.cfg_scale, "sampler": settings.sampler,
                          "dtype": settings.dtype, "lora": str(settings.lora) if settings.lora else None,
                          "singles": len(singles), "pairs": len(pairs)}
    return result


def format_report(r: dict[str, object]) -> str:
    def pct(d: dict, k: str) -> str:
        return f"{d[k]:.1%}"

    real, vae = r["ceiling_real"], r["ceiling_vae"]
    rows = [("background colour", "background_accuracy"), ("position", "position_accuracy"),
            ("identity (top-1)", "identity_top1"), ("all three", "all_three_accuracy")]
    lines = [f"held-out single-object prompts ({r['settings']['singles']}), generated | real scenes | after VAE:"]
    lines += [f"  {label:<18} {pct(r, k):>7} | {pct(real, k):>7} | {pct(vae, k):>7}" for label, k in rows]
    lines.append(f"held-out two-object prompts ({r['settings']['pairs']}): pair accuracy {r['pair_accuracy']:.1%}"
                 f" (real scenes {r['pair_accuracy_real']:.1%})")
    lines.append(f"CLIP score {r['clip_score']:.2f} (real scenes {r['clip_score_real']:.2f}),"
                 f" FD in CLIP space {r['fd_clip']:.3f}, VAE PSNR {r['vae_psnr']:.2f} dB")
    return "\n".join(lines)
