"""How the hires fix keeps huabu-tiny's scenes: held-out one-object prompts generated at 64 px, and the same seeds
with the hires fix 2x through an upscaler (default huabu-tiny-2x), read back by `huabu tiny eval`'s measures after
a Lanczos downscale of the 128 px outputs to 64 px.

    python -m huabu.tiny.eval_hires [--count 200] [--upscaler huabu-tiny-2x] [--denoise 0.25] [--hires-steps 10]
        [--hires-lora NAME]

200 prompts, as `huabu tiny eval` scores: on 50 a prompt is 2 points, too coarse for a 5-point target.

`--hires-lora` names a LoRA for the second pass only, in the hires prompt as A1111 users write it.

Prints one JSON line: both score sets (background, position, identity, all three) and their differences in points.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from PIL import Image

from huabu.core.requests import GenerateRequest
from huabu.core.settings import Settings
from huabu.engine.generate import Engine
from huabu.tiny import measure
from huabu.tiny import scenes as S


def hires_prompt(caption: str, lora: str) -> str:
    """The second pass's prompt: "" (the prompt) or the caption with the LoRA's tag."""
    return f"{caption} <lora:{lora}:1>" if lora else ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--upscaler", default="huabu-tiny-2x")
    parser.add_argument("--denoise", type=float, default=0.25)
    parser.add_argument("--hires-steps", type=int, default=10)
    parser.add_argument("--hires-lora", default="", help="a LoRA for the second pass (in the hires prompt)")
    args = parser.parse_args(argv)
    engine = Engine(Settings.from_env(device="cpu"))
    singles = S.eval_single_scenes(args.count)
    base, hires = [], []
    for index, scene in enumerate(singles):
        common = dict(prompt=scene.caption, seed=index, steps=20, cfg_scale=5, sampler="DPM++ 2M", width=64,
                      height=64)
        base.append(np.asarray(engine.generate(GenerateRequest.create(**common)).images[0]))
        big = engine.generate(GenerateRequest.create(**common, enable_hr=True, hr_scale=2, hr_upscaler=args.upscaler,
                                                     hr_second_pass_steps=args.hires_steps,
                                                     denoising_strength=args.denoise,
                                                     hr_prompt=hires_prompt(scene.caption, args.hires_lora)
                                                     )).images[0]
        hires.append(np.asarray(big.resize((64, 64), Image.LANCZOS)))
    scores = {"base_64": measure.score_singles(base, singles), "hires_2x": measure.score_singles(hires, singles)}
    scores["points"] = {key: round(100 * (scores["hires_2x"][key] - scores["base_64"][key]), 1)
                        for key in scores["base_64"]}
    scores["settings"] = vars(args)
    print(json.dumps(scores), flush=True)


if __name__ == "__main__":
    main()
