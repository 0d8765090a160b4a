"""huabu-tiny-2x: a compact super-resolution network (huabu.engine.sr_compact) trained on huabu-tiny's scenes,
rendered at 64 px (input) and at 128 px (target: the same scene drawn at twice the size, not a resize).

    python -m huabu.tiny.train_sr OUT_DIR [--steps N] [--features F] [--convs C] [--crop PX] [--eval] [--export FILE]

Resumable: checkpoints in OUT_DIR/checkpoints (huabu.training.checkpoint) every 100 steps; `--eval` prints the
PSNR on 100 held-out scenes at 128 px beside Lanczos's. The batch of step k is a pure function of k, so a resumed
run sees the data it would have seen.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from huabu.engine.sr_compact import CompactSR
from huabu.tiny import scenes
from huabu.training.checkpoint import load_latest, save_checkpoint

SEED = 2026
BATCH = 16
LR = 1e-3


def scene_pair(scene: scenes.Scene) -> tuple[np.ndarray, np.ndarray]:
    """(64 px, 128 px) renders of one scene."""
    return scenes.render(scene.background, scene.objects), scenes.render_scaled(scene, 2)


def _tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def crop_pair(scene: scenes.Scene, low: np.ndarray, high: np.ndarray, size: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A `size` px window of the 64 px render around one of the scene's objects (moved a few pixels at random),
    and the same window of the 128 px render. Most of a scene is flat background, which the nearest-neighbour
    base the network adds to already gets right; windows on the objects spend each step where the error is."""
    placed = scene.objects[rng.integers(len(scene.objects))]
    limit = low.shape[0] - size
    x0, y0 = (int(np.clip(start + placed.size // 2 - size // 2 + rng.integers(-4, 5), 0, limit))
              for start in (placed.x, placed.y))
    return low[y0:y0 + size, x0:x0 + size], high[2 * y0:2 * (y0 + size), 2 * x0:2 * (x0 + size)]


def batch(step: int, crop: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch `step` of the training stream (whole scenes, or `crop` px windows on their objects)."""
    lows, highs = [], []
    for i in range(BATCH):
        scene = scenes.training_scene(SEED, step * BATCH + i)
        low, high = scene_pair(scene)
        if crop:
            low, high = crop_pair(scene, low, high, crop, np.random.default_rng([SEED, step, i]))
        lows.append(low)
        highs.append(high)
    return _tensor(lows), _tensor(highs)


def train(out: Path, steps: int, features: int = 32, convs: int = 8, crop: int = 0) -> CompactSR:
    torch.manual_seed(SEED)
    model = CompactSR(features, convs)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    state = load_latest(out / "checkpoints", {"model": model}, {"adam": optimizer})
    start = state["step"] if state else 0
    for step in range(start, steps):
        for group in optimizer.param_groups:  # cosine decay to a tenth
            group["lr"] = LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        low, high = batch(step, crop)
        loss = torch.nn.functional.mse_loss(model(low), high)  # PSNR is what counts; L1 settled on nearest
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            save_checkpoint(out / "checkpoints", step + 1, {"model": model}, {"adam": optimizer})
            print(json.dumps({"step": step + 1, "mse": round(loss.item(), 6)}), flush=True)
    return model


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


@torch.no_grad()
def evaluate(model: CompactSR, count: int = 100) -> dict[str, float]:
    """Mean PSNR at 128 px on held-out scenes (eval_single_scenes): the network's and Lanczos's."""
    ours, lanczos = [], []
    for scene in scenes.eval_single_scenes(count):
        low, high = scene_pair(scene)
        out = model(_tensor([low])).clamp(0, 1)[0].permute(1, 2, 0).numpy()
        ours.append(psnr(np.round(out * 255).astype(np.uint8), high))
        resized = np.asarray(Image.fromarray(low).resize(high.shape[:2][::-1], Image.LANCZOS))
        lanczos.append(psnr(resized, high))
    return {"psnr": round(float(np.mean(ours)), 2), "lanczos_psnr": round(float(np.mean(lanczos)), 2)}


def export(model: CompactSR, path: Path) -> Path:
    """The weights as fp16 safetensors, in the compact layout that huabu.engine.upscalers (and spandrel) load."""
    from safetensors.torch import save_file

    from huabu.core.atomic import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--features", type=int, default=32, help="channels of each convolution")
    parser.add_argument("--convs", type=int, default=8, help="convolutions between the first and the last")
    parser.add_argument("--crop", type=int, default=0, help="train on windows this many px wide around the objects "
                                                              "(0: whole scenes)")
    parser.add_argument("--eval", action="store_true")
    parser.add_argument("--export", type=Path, help="write the trained weights here (fp16 safetensors)")
    args = parser.parse_args(argv)
    model = train(args.out, args.steps, args.features, args.convs, args.crop)
    if args.eval:
        print(json.dumps(evaluate(model.eval())), flush=True)
    if args.export:
        print(export(model, args.export), flush=True)


if __name__ == "__main__":
    main()
