"""The README's figure of the hires fix and outpainting on huabu-tiny (docs/huabu-tiny-hires-outpaint.png).

    .venv/bin/python scripts/hires_outpaint_figure.py

Top row: one 64x64 huabu-tiny image (shown at 2x with nearest neighbours), the same seed with the hires fix to
128x128 (10 hires steps at denoising strength 0.3) through the latent upscaler, Lanczos and huabu-tiny-2x.
Bottom row: that image outpainted by 32 pixels left and right (the middle 64 pixels are the input's, unchanged).
Fixed seeds, DPM++ 2M, 20 steps, CFG 5; written atomically.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from huabu.core.atomic import atomic_path
from huabu.core.requests import GenerateRequest
from huabu.core.settings import Settings
from huabu.engine.generate import Engine

OUT = Path(__file__).resolve().parents[1] / "docs" / "huabu-tiny-hires-outpaint.png"
PROMPT = "a large rocket in the top left corner on a purple background"
BASE = dict(prompt=PROMPT, seed=7, steps=20, cfg_scale=5, width=64, height=64)


def main() -> None:
    engine = Engine(Settings.from_env(device="cpu"))
    base = engine.generate(GenerateRequest.create(**BASE)).images[0]
    hires = [engine.generate(GenerateRequest.create(**BASE, enable_hr=True, hr_scale=2, hr_second_pass_steps=10,
                                                    denoising_strength=0.3, hr_upscaler=upscaler)).images[0]
             for upscaler in ("Latent", "Lanczos", "huabu-tiny-2x")]
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "base.png"
        base.save(source)
        outpainted = engine.generate(GenerateRequest.create(
            mode="inpaint", prompt="a rocket and a cat on a purple background", seed=3, steps=20, cfg_scale=5,
            init_image=str(source), outpaint_left=32, outpaint_right=32, denoising_strength=0.9,
            inpainting_fill=0)).images[0]
    figure = Image.new("RGB", (4 * 128 + 5 * 8, 2 * 128 + 3 * 8 + 2 * 14), "white")
    draw = ImageDraw.Draw(figure)
    tiles = [(base.resize((128, 128), Image.NEAREST), "64x64"), (hires[0], "hires 2x Latent"),
             (hires[1], "hires 2x Lanczos"), (hires[2], "hires 2x huabu-tiny-2x")]
    for column, (image, label) in enumerate(tiles):
        x = 8 + column * 136
        draw.text((x, 4), label, fill="black")
        figure.paste(image, (x, 18))
    draw.text((8, 18 + 128 + 8), "outpainted 32 px left and right (middle: the input)", fill="black")
    figure.paste(outpainted.resize((256, 128), Image.NEAREST), (8, 18 + 128 + 22))
    with atomic_path(OUT) as tmp_path:
        figure.save(tmp_path, format="PNG", optimize=True)
    print(OUT)


if __name__ == "__main__":
    main()
