"""The try-on app on huabu-tiny scenes (issue 20, item 6): put a reference object into a region of another scene.

Each case takes a held-out case of `huabu tiny eval-ip-adapter` (an object B at a position on a background, and a
reference render of B elsewhere, on another background, in another colour where it takes one). The target scene
shows another object A on that background where it does not touch B's box; the region is B's box, and the prompt
names only the position and background ("in the top left corner on a green background"), so B can come only from
the reference. Printed: how often the region reads as B (the region alone on the background, read as `eval-ip-adapter`
reads identity among all world objects), the same with the adapter's weight at 0 and on the real composite (the
ceiling), and how often the pixels outside the region stay the target's (max abs difference <= 2).

    .venv/bin/python benchmarks/apps_try_on.py --adapter runs/ip-adapter/final [--cases 50] [--weight 1.0]
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
from huabu.engine.generate import Engine
from huabu.engine.models import BUILTIN_DIR
from huabu.tiny import ip_adapter_scenes as IS
from huabu.tiny import scenes as S
from huabu.tiny import world as W
from huabu.tiny.demo_configs import IpAdapterEvalConfig
from huabu.tiny.eval_ip_adapter import adapter_file, eval_cases, read

PAD = 2  # pixels around B's box that the region adds, so the glyph's anti-aliased edge is inside it


def box_of(placed: S.Placed) -> tuple[int, int, int, int]:
    return (max(placed.x - PAD, 0), max(placed.y - PAD, 0), min(placed.x + placed.size + PAD, S.IMAGE_SIZE),
            min(placed.y + placed.size + PAD, S.IMAGE_SIZE))


def target_scene(rng: np.random.Generator, scene: S.Scene) -> S.Scene:
    """Another object, small, on the same background at a position clear of the inserted object's box."""
    inserted = scene.objects[0]
    x0, y0, x1, y1 = box_of(inserted)
    size = S.SIZES["small"]
    clear = []
    for position in S.POSITION_NAMES:
        x, y = S.anchor_xy(position, size)
        if x + size <= x0 or x >= x1 or y + size <= y0 or y >= y1:
            clear.append(position)
    others = [obj for obj in range(len(S.OBJECTS)) if obj != inserted.obj]
    obj = others[int(rng.integers(len(others)))]
    if not clear:
        return S.Scene(scene.background, (), "", {"colours": ()})
    return W.single(rng, "position", obj, scene.background, clear[int(rng.integers(len(clear)))], "small")


def region_alone(image: np.ndarray, box: tuple[int, int, int, int], background: str) -> np.ndarray:
    """The image's region on the plain background: what the readers see as the one object of the region."""
    alone = np.empty_like(image)
    alone[:] = np.asarray(S.COLOURS[background], np.uint8)
    x0, y0, x1, y1 = box
    alone[y0:y1, x0:x1] = image[y0:y1, x0:x1]
    return alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, help="an IP-Adapter .safetensors file or a folder holding one")
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--weight", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    adapter = adapter_file(IpAdapterEvalConfig(adapter=args.adapter), BUILTIN_DIR)
    folder = Path(tempfile.mkdtemp(prefix="apps-try-on-"))
    engine = Engine(Settings.for_home(folder, device="cpu", dtype="fp32", hub_offline=True))
    rng = np.random.default_rng(args.seed)
    hits = {"with": 0, "weight 0": 0, "real": 0}
    kept = 0
    started = time.perf_counter()
    for index, (scene, reference) in enumerate(eval_cases(args.cases, 3333 + args.seed, unseen=False)):
        inserted = scene.objects[0]
        target = W.render(target_scene(rng, scene))
        box = box_of(inserted)
        Image.fromarray(target).save(folder / f"target{index}.png")
        Image.fromarray(reference).save(folder / f"reference{index}.png")
        outputs = {}
        for label, weight in (("with", args.weight), ("weight 0", 0.0)):
            request = AppRequest.create(
                app="try-on", image=str(folder / f"target{index}.png"), reference=str(folder / f"reference{index}.png"),
                box=list(box), prompt=IS.nameless_caption(scene.background, inserted.position), model="huabu-tiny",
                ip_adapter_model=str(adapter), ip_adapter_weight=weight, steps=args.steps, cfg_scale=args.cfg,
                seed=args.seed + index)
            outputs[label] = np.asarray(run_app(engine, request).images[0].convert("RGB"))
        outputs["real"] = np.where(region_mask(box)[..., None], W.render(scene), target)
        for label, image in outputs.items():
            hits[label] += read(region_alone(image, box, scene.background), inserted.size)[2] == inserted.obj
        change = np.abs(outputs["with"].astype(np.int16) - target.astype(np.int16)).max(axis=-1)
        kept += bool(change[~region_mask(box)].max() <= 2)
    seconds = time.perf_counter() - started
    print(f"try-on on {args.cases} held-out huabu-tiny cases ({adapter.name}, weight {args.weight:g}, {args.steps} "
          f"steps, CFG {args.cfg:g}, {seconds / args.cases:.1f} s a case):")
    print("  region read as the reference's object: " + ", ".join(
        f"{label} {count / args.cases:.0%}" for label, count in hits.items()))
    print(f"  outside the region max abs difference <= 2: {kept / args.cases:.0%}")


def region_mask(box: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros((S.IMAGE_SIZE, S.IMAGE_SIZE), bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    return mask


if __name__ == "__main__":
    main()
