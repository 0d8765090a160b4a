"""Render the prompt book's style example images with huabu-tiny (huabu/engine/prompts/book/examples/NAME.png).

    .venv/bin/python scripts/style_examples.py [--model huabu-tiny] [--only NAME ...]

Each style wraps a scene prompt that huabu-tiny knows (an object, a position and a background colour, varied from
style to style so the gallery does not show one picture 76 times) and is rendered at the engine's defaults with a
fixed seed. huabu-tiny only understands scene captions, so the style words change little in its pictures; with a
real SD model (`--model`) the same command shows what each style does. Files are written atomically, with the
A1111 `parameters` chunk, and reduced to a palette to stay small in git.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from huabu.core.pnginfo import save_png_atomic
from huabu.core.requests import GenerateRequest
from huabu.core.settings import Settings
from huabu.engine.generate import Engine
from huabu.engine.prompts.book import load_book
from huabu.tiny import scenes

EXAMPLES = Path(__file__).resolve().parents[1] / "huabu" / "prompts" / "book" / "examples"


def scene_prompt(index: int) -> str:
    """A caption huabu-tiny was trained on, different for neighbouring styles."""
    name = scenes.OBJECT_NAMES[(index * 7) % len(scenes.OBJECT_NAMES)]
    colour = scenes.COLOUR_NAMES[(index * 3) % len(scenes.COLOUR_NAMES)]
    position = scenes.POSITION_PHRASES[scenes.POSITION_NAMES[index % len(scenes.POSITION_NAMES)]]
    return f"a large {name} {position} on a {colour} background"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="huabu-tiny")
    parser.add_argument("--only", nargs="*", help="style names to render (default: all)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    book = load_book()
    names = args.only or list(book.styles)
    EXAMPLES.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as home:
        engine = Engine(Settings.for_home(home))
        for index, name in enumerate(names):
            request = GenerateRequest.create(prompt=scene_prompt(index), styles=[name], model=args.model,
                                             seed=args.seed)
            result = engine.generate(request)
            image = result.images[0].quantize(64)
            target = EXAMPLES / f"{name}.png"
            save_png_atomic(image, target, result.infotexts[0])
            print(f"{name}: {target.relative_to(EXAMPLES.parents[3])}")


if __name__ == "__main__":
    main()
