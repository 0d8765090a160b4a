"""The replace app on huabu-tiny scenes (issue 20, item 5): held-out one-object scenes, the object clicked, the
background asked in another colour. Prints how often the kept subject is exact (max abs difference <= 2 inside the
kept part eroded by 2 px) and how often the new background reads as the colour asked (huabu.tiny.measure).

    .venv/bin/python benchmarks/apps_replace.py [--cases 50] [--steps 20] [--cfg 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from huabu.core.apps import AppRequest
from huabu.core.settings import Settings
from huabu.engine.apps import run_app
from huabu.engine.apps.common import erode
from huabu.engine.apps.replace import replace_plan
from huabu.engine.generate import Engine
from huabu.tiny import measure as M
from huabu.tiny import scenes as S


def click(image: np.ndarray) -> tuple[int, int]:
    """The object pixel nearest the object's centroid (a glyph may be hollow at its centre)."""
    _, background = M.background_colour(image)
    ys, xs = np.nonzero(M.object_mask(image, background))
    cx, cy = xs.mean(), ys.mean()
    nearest = int(np.argmin((xs - cx) ** 2 + (ys - cy) ** 2))
    return int(xs[nearest]), int(ys[nearest])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="apps-replace-"))
    engine = Engine(Settings.for_home(folder, device="cpu", dtype="fp32", hub_offline=True))
    rng = np.random.default_rng(args.seed)
    exact = coloured = 0
    started = time.perf_counter()
    for index, scene in enumerate(S.eval_single_scenes(args.cases, seed=4242 + args.seed)):
        image = S.render(scene.background, scene.objects)
        path = folder / f"scene{index}.png"
        Image.fromarray(image).save(path)
        wanted = str(rng.choice([c for c in S.COLOUR_NAMES if c != scene.background]))
        name = S.OBJECT_NAMES[scene.objects[0].obj]
        x, y = click(image)
        request = AppRequest.create(app="replace", image=str(path), point=[x, y], model="huabu-tiny",
                                    prompt=f"{S.article(name)} {name} on {S.article(wanted)} {wanted} background",
                                    steps=args.steps, cfg_scale=args.cfg, seed=args.seed + index)
        _, _, kept = replace_plan(request, None)
        out = np.asarray(run_app(engine, request).images[0]).astype(np.int16)
        change = np.abs(out - image.astype(np.int16)).max(axis=-1)
        inner = erode(kept, 2)
        exact += bool(change[inner].max() <= 2) if inner.any() else 1
        coloured += M.background_colour(out.astype(np.uint8))[0] == wanted
    seconds = time.perf_counter() - started
    print(f"replace on {args.cases} held-out huabu-tiny scenes ({args.steps} steps, CFG {args.cfg:g}, "
          f"{seconds / args.cases:.1f} s a case):")
    print(f"  kept subject exact (max abs diff <= 2 inside the kept part eroded by 2 px): {exact / args.cases:.0%}")
    print(f"  new background read as the colour asked: {coloured / args.cases:.0%}")


if __name__ == "__main__":
    main()
