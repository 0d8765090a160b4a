"""The portrait app on huabu-tiny (issue 20, item 3): 16 photos of the dragon glyph the base model never saw
(huabu.tiny.lora_data's subject scenes), through the whole flow (crop, caption, subject LoRA, styled renders).
Prints how many styles were rendered and how often a render reads as the dragon (nearest of huabu-tiny's 64 glyph
templates plus the dragon, as `huabu tiny eval-lora` reads it).

    .venv/bin/python benchmarks/apps_portrait.py [--styles 20] [--train-steps 400] [--home DIR] [--resume]
                                                 [--style-start 0.85]
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
from huabu.engine.generate import Engine
from huabu.tiny import lora_data as L
from huabu.tiny.eval_lora import read_dragon
from huabu.training.portrait import run_portrait

READ_SIZES = (26, 36)  # crops hold the subject at about 1/1.8 of the side; either glyph size may match


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--styles", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=400)
    parser.add_argument("--home", type=Path, help="huabu home for the run (default: a fresh temporary folder)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--style-start", type=float, default=0.0)
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="apps-portrait-"))
    photos = home / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for index, scene in enumerate(L.subject_scenes(16)):
        Image.fromarray(L.render_subject(scene)).save(photos / f"{index:02d}.png")
    engine = Engine(Settings.for_home(home, device="cpu", dtype="fp32", hub_offline=True))
    request = AppRequest.create(app="portrait", photos=str(photos), name=L.TRIGGER, count=args.styles,
                                train_steps=args.train_steps, model="huabu-tiny", steps=20, cfg_scale=5.0, seed=0,
                                resume=args.resume, style_start=args.style_start)
    started = time.perf_counter()
    result = run_portrait(request, engine)
    seconds = time.perf_counter() - started
    hits = [any(read_dragon(np.asarray(Image.open(path).convert("RGB")), size)[0] for size in READ_SIZES)
            for path in result.renders]
    print(f"portrait on huabu-tiny: 16 dragon photos ({result.found}), {args.train_steps} LoRA steps, "
          f"{len(result.renders)}/{args.styles} styles rendered (style from {args.style_start:g} of the steps) in "
          f"{seconds / 60:.1f} min")
    print(f"  renders read as the dragon: {np.mean(hits):.0%} ({sum(hits)}/{len(hits)}); sheet {result.sheet}")


if __name__ == "__main__":
    main()
