"""Screenshots of the studio's main tabs, in Chinese and English, for docs/screenshots/ and the README.

    .venv/bin/python scripts/screenshots.py [--model MODEL] [--out docs/screenshots]

The studio runs on a temporary huabu home (its own gallery and outputs) and makes one image first, so the output
and gallery panes have something in them. MODEL is anything `--model` takes; without it: huabu-tiny when its
weights exist, else a tiny random model built like the tests' (its pictures are noise). Needs Debian's chromium and
fonts-noto-cjk (scripts/install.sh --dev). PNGs are reduced to a 128-colour palette to stay small.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]


def tiny_random_model(folder: Path) -> str:
    """The tests' tiny random SD pipeline (tests/conftest.py), saved as a diffusers folder."""
    spec = importlib.util.spec_from_file_location("huabu_test_conftest", ROOT / "tests" / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    conftest.build_tiny_pipeline().save_pretrained(folder)
    return str(folder)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference_picture(path: Path) -> Path:
    """A simple drawing with clear edges for the ControlNet tab."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (256, 256), (236, 228, 210))
    draw = ImageDraw.Draw(image)
    draw.ellipse((40, 60, 150, 170), fill=(200, 80, 40))
    draw.rectangle((130, 120, 220, 220), fill=(40, 90, 160))
    draw.polygon([(60, 230), (128, 20), (200, 230)], outline=(20, 20, 20), width=4)
    image.save(path)
    return path


def shrink(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def shoot(url: str, out: Path, reference: Path) -> list[Path]:
    """Per language: a browser page in that locale (gradio's own texts follow it), the studio switched to it with
    the page's toggle, one image made from a prompt and two prompt-book chips, then the main tabs."""
    from playwright.sync_api import sync_playwright

    written = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for language, locale, toggle, chips in (("en", "en-US", "English", ("Cat", "White background")),
                                                ("zh", "zh-CN", "中文", ("猫", "纯白背景"))):
            page = browser.new_page(viewport={"width": 1280, "height": 860}, locale=locale)
            page.set_default_timeout(120_000)
            page.goto(url)
            page.wait_for_selector("#txt2img-prompt textarea")
            page.locator("#language").get_by_text(toggle).click()
            page.wait_for_function("([id, text]) => document.querySelector(id).innerText.includes(text)",
                                   arg=["#tab-txt2img-button", {"en": "Text to image", "zh": "文生图"}[language]])
            written.append(_txt2img(page, out, language, chips))
            written.append(_controlnet(page, out, language, reference))
            written.append(_gallery(page, out, language))
            page.close()
        browser.close()
    return written


def _save(page, out: Path, name: str) -> Path:
    path = out / name
    page.screenshot(path=str(path))
    shrink(path)
    return path


def _txt2img(page, out: Path, language: str, chips: tuple[str, str]) -> Path:
    page.click("#tab-txt2img-button")
    page.locator("#txt2img-book button.label-wrap").click()
    page.locator("#txt2img-chips-subject").get_by_label(chips[0], exact=True).check()
    page.click("#txt2img-book-background-button")  # a subject and background huabu-tiny was trained on
    page.locator("#txt2img-chips-background").get_by_label(chips[1], exact=True).check()
    page.wait_for_function("() => document.querySelector('#txt2img-prompt textarea').value.includes(',')")
    page.click("#txt2img-generate")
    page.wait_for_selector("#txt2img-output img")
    page.wait_for_function("() => document.querySelector('#txt2img-parameters textarea').value.includes('Seed')")
    return _save(page, out, f"txt2img-{language}.png")


def _controlnet(page, out: Path, language: str, reference: Path) -> Path:
    page.click("#tab-controlnet-button")
    page.set_input_files("#controlnet-reference input[type=file]", str(reference))
    page.wait_for_selector("#controlnet-reference img")
    page.click("#controlnet-preview")
    page.wait_for_selector("#controlnet-map img")
    return _save(page, out, f"controlnet-{language}.png")


def _gallery(page, out: Path, language: str) -> Path:
    page.click("#tab-gallery-button")
    page.wait_for_selector("#gallery-items img")
    page.locator("#gallery-items img").first.click()
    page.wait_for_function("() => document.querySelector('#gallery-parameters textarea').value.includes('Seed')")
    return _save(page, out, f"gallery-{language}.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model to generate with (default: huabu-tiny if it has weights, else a "
                                        "tiny random model)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--port", type=int, default=0, help="port for the studio while shooting (default: a free one)")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"error: {CHROMIUM} is missing; install Debian's chromium and fonts-noto-cjk "
              f"(scripts/install.sh --dev)", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    from huabu.cli.options import quiet_libraries
    from huabu.core.settings import BUILTIN_MODEL, Settings
    from huabu.engine.models import builtin_has_weights
    from huabu.ui.app import Studio

    quiet_libraries()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="huabu-screenshots-") as tmp:
        home = Path(tmp)
        model = args.model or (BUILTIN_MODEL if builtin_has_weights() else tiny_random_model(home / "tiny-random"))
        settings = Settings.for_home(home, default_model=model, hub_offline=True)
        port = args.port or free_port()
        demo = Studio(settings, "en").launch("127.0.0.1", port, block=False, quiet=True)
        try:
            written = shoot(f"http://127.0.0.1:{port}/", args.out, reference_picture(home / "reference.png"))
        finally:
            demo.close()
    for path in written:
        print(f"{path}  {path.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
