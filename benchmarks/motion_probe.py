"""Does a motion module let the prompt choose the direction? Two quick figures for huabu-tiny's moving scenes.

    .venv/bin/python benchmarks/motion_probe.py [--motion FOLDER] [--seeds 6] [--clips 24]

1. First step: the clip x0 the model predicts from pure noise at t=999 (CFG 5), per asked motion: how fast the
   object's mass moves (centroid px a frame) and grows (% a frame), averaged over seeds, beside the mean of real
   clips of that motion (what an ideal denoiser predicts there from the words alone). A module that follows the
   words moves the mass the asked way already here; `huabu tiny eval-video` needs a full sample per clip.
2. Leak: sampling (DDIM, 10 steps) started from a real held-out clip noised to the first step, with a caption that
   asks the opposite motion: how often the result follows the words, and how often the clip hidden in the noise.

FOLDER is a MotionAdapter folder, with its text_lora.safetensors and motion_words.safetensors when it has them
(default: huabu-tiny's own).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up", "grow": "shrink", "shrink": "grow"}
FRAMES = 8


def load(motion: Path):
    from diffusers import MotionAdapter, UNetMotionModel

    from huabu.engine.motion_modules import MOTION_WORDS_FILE, TEXT_LORA_FILE
    from huabu.engine.motion_words import attach_motion_words, load_motion_words, load_word_rows
    from huabu.training.motion import load_base
    from huabu.training.motion_config import BUILTIN_DIR

    unet2d, vae, text_encoder, tokenizer = load_base(BUILTIN_DIR)
    unet = UNetMotionModel.from_unet2d(unet2d, MotionAdapter.from_pretrained(motion).float()).eval()
    if (motion / TEXT_LORA_FILE).is_file():
        unet.load_lora_adapter(str(motion / TEXT_LORA_FILE), prefix="unet", adapter_name="motion_text")
    if (motion / MOTION_WORDS_FILE).is_file():
        attach_motion_words(unet, load_motion_words(motion / MOTION_WORDS_FILE, unet))
        rows = load_word_rows(motion / MOTION_WORDS_FILE, tokenizer, text_encoder)
        if rows is not None:  # this text encoder encodes only video prompts here: the rows stay on
            rows.attach(text_encoder)
    return unet, vae, text_encoder, tokenizer


def guided_eps(unet, x, t, cond, uncond, cfg: float = 5.0):
    both = torch.cat([uncond, cond]).repeat_interleave(x.shape[2], dim=0)
    u, c = unet(torch.cat([x, x]), t, encoder_hidden_states=both).sample.chunk(2)
    return u + cfg * (c - u)


def decode(vae, latents) -> np.ndarray:
    """Clip latents [B, C, F, h, w] as float pixels [B, F, H, W, 3] in 0-255."""
    b, c, f, h, w = latents.shape
    z = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w) / vae.config.scaling_factor
    pixels = (vae.decode(z).sample.clamp(-1, 1) + 1) * 127.5
    return pixels.permute(0, 2, 3, 1).reshape(b, f, *pixels.shape[2:], 3).float().numpy()


def mass_rates(clips: np.ndarray, background: str) -> tuple[float, float, float]:
    """(x, y) centroid speed in px a frame and mass growth in % a frame of the pixels' distance from the background,
    fitted over frames and averaged over clips [B, F, H, W, 3]."""
    from huabu.tiny import scenes as S

    mass = np.abs(clips - np.asarray(S.COLOURS[background], np.float32)).sum(-1)
    ys, xs = np.mgrid[0 : mass.shape[2], 0 : mass.shape[3]]
    total = mass.sum((2, 3))
    frames = np.arange(mass.shape[1]) - (mass.shape[1] - 1) / 2
    rates = [np.polyfit(frames, series.T, 1)[0].mean() for series in
             ((mass * xs).sum((2, 3)) / total, (mass * ys).sum((2, 3)) / total, total / total.mean(1, keepdims=True))]
    return round(float(rates[0]), 2), round(float(rates[1]), 2), round(100 * float(rates[2]), 2)


@torch.no_grad()
def first_step(unet, vae, encode, sched, seeds: int) -> dict[str, dict[str, tuple[float, float, float]]]:
    from huabu.tiny import video_scenes as V

    ab = sched.alphas_cumprod[999]
    out = {}
    for scene in V.eval_moving_scenes(len(V.MOTIONS), frames=FRAMES):
        x = torch.randn(seeds, 4, FRAMES, 16, 16, generator=torch.Generator().manual_seed(1))
        eps = guided_eps(unet, x, torch.tensor(999), encode([scene.caption] * seeds), encode([""] * seeds))
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        rng = np.random.default_rng(0)
        real = np.stack([V.render_moving(V.moving_scene(rng, scene.obj, scene.background, scene.motion, FRAMES))
                         for _ in range(200)]).astype(np.float32).mean(0, keepdims=True)
        out[scene.motion] = {"model": mass_rates(decode(vae, x0), scene.background),
                             "real mean": mass_rates(real, scene.background)}
    return out


@torch.no_grad()
def leak(unet, vae, encode, sched, clips: int) -> dict[str, float]:
    from diffusers import DDIMScheduler

    from huabu.tiny import video_scenes as V
    from huabu.tiny.video_measure import motion_direction
    from huabu.training.diffusion import to_tensor

    scenes = V.eval_moving_scenes(clips, frames=FRAMES)
    pixels = to_tensor(np.concatenate([V.render_moving(s) for s in scenes]))
    x0 = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor
    x0 = x0.reshape(clips, FRAMES, *x0.shape[1:]).permute(0, 2, 1, 3, 4)
    ddim = DDIMScheduler.from_config(sched.config)
    ddim.set_timesteps(10)
    x = ddim.add_noise(x0, torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)), ddim.timesteps[:1])
    asked = [OPPOSITE[s.motion] for s in scenes]
    cond = encode([V.motion_caption(s.obj, m, s.background) for s, m in zip(scenes, asked)])
    uncond = encode([""] * clips)
    for t in ddim.timesteps:
        x = ddim.step(guided_eps(unet, x, t, cond, uncond), t, x).prev_sample
    got = [motion_direction(list(v.round().astype(np.uint8)), s.background) for v, s in zip(decode(vae, x), scenes)]
    return {"first timestep": int(ddim.timesteps[0]),
            "follows the words": round(float(np.mean([g == a for g, a in zip(got, asked)])), 3),
            "follows the hidden clip": round(float(np.mean([g == s.motion for g, s in zip(got, scenes)])), 3)}


def main() -> None:
    from huabu.training.diffusion import encode_text, noise_scheduler
    from huabu.training.motion_config import BUILTIN_DIR

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--motion", type=Path, default=BUILTIN_DIR / "motion_adapter")
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--clips", type=int, default=24)
    args = parser.parse_args()
    unet, vae, text_encoder, tokenizer = load(args.motion)
    sched = noise_scheduler()

    def encode(texts: list[str]) -> torch.Tensor:
        return encode_text(tokenizer, text_encoder, texts)

    print(f"motion module {args.motion}")
    print("first step (t=999, CFG 5): (x px/frame, y px/frame, mass %/frame), model | mean of real clips")
    for motion, rates in first_step(unet, vae, encode, sched, args.seeds).items():
        print(f"  {motion:<7} {str(rates['model']):<22} | {rates['real mean']}")
    print("leak (sampling from a real clip noised to the first step, the opposite motion asked):",
          json.dumps(leak(unet, vae, encode, sched, args.clips)))


if __name__ == "__main__":
    main()
