"""The studio in a real browser (Debian's headless Chromium driven by playwright): type a prompt, generate, see
the image and its parameters in the gallery; switch to Chinese without losing the prompt; upload a reference and
see its canny map; write glyph words in a typed box, then in a box drawn on the canvas. Skipped, with the reason,
where chromium or playwright is missing (scripts/install.sh --dev installs both)."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image, ImageDraw
from ui_support import CHROMIUM, CHROMIUM_ARGS, serving, ui_settings

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: install Debian's chromium "
                                                              f"and fonts-noto-cjk (scripts/install.sh --dev)")
expect = sync_api.expect
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def studio_url(model_store, tmp_path_factory):
    from huabu.ui.app import Studio

    studio = Studio(ui_settings(model_store, tmp_path_factory.mktemp("ui-browser")), "en")
    with serving(studio) as url:
        yield studio, url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, studio_url):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    page.goto(studio_url[1])
    page.wait_for_selector("#txt2img-prompt textarea")
    yield page
    page.close()


def test_generate_shows_image_and_gallery_parameters_sends_them_then_chinese_labels(page):
    prompt = page.locator("#txt2img-prompt textarea")
    page.locator("#txt2img-book button.label-wrap").click()
    page.locator("#txt2img-chips-subject").get_by_label("Red fox").check()
    expect(prompt).to_have_value("a red fox")  # the prompt book inserted the English text
    prompt.fill("a red fox, in the snow")
    steps = page.locator("#txt2img-steps input[type=number]")
    steps.fill("4")
    steps.press("Enter")
    page.click("#txt2img-generate")
    expect(page.locator("#txt2img-output img").first).to_be_visible()
    parameters = page.locator("#txt2img-parameters textarea")
    expect(parameters).to_have_value(re.compile(r"^a red fox, in the snow\nSteps: 4, Sampler: DPM\+\+ 2M, "))
    seed = parameters.input_value().split("Seed: ")[1].split(",")[0]

    page.click("#tab-gallery-button")
    page.locator("#gallery-items img").first.click()
    expect(page.locator("#gallery-parameters textarea")).to_have_value(
        re.compile(rf"^a red fox, in the snow\nSteps: 4, .*Seed: {seed},"))
    page.click("#gallery-send-img2img")  # "send to" fills the fields from the parameters and brings the image
    expect(page.locator("#img2img-prompt textarea")).to_have_value("a red fox, in the snow")
    expect(page.locator("#img2img-seed input[type=number]")).to_have_value(seed)
    expect(page.locator("#img2img-steps input[type=number]")).to_have_value("4")
    expect(page.locator("#img2img-image img").first).to_be_visible()

    page.locator("#language").get_by_text("中文").click()
    expect(page.locator("#tab-gallery-button")).to_have_text("画廊")
    expect(page.locator("#tab-txt2img-button")).to_have_text("文生图")
    expect(page.locator("#gallery-send-txt2img")).to_have_text("发送到文生图")
    page.click("#tab-txt2img-button")
    expect(page.locator("#txt2img-generate")).to_have_text("生成")
    expect(page.locator("#txt2img-prompt")).to_contain_text("提示词")
    expect(prompt).to_have_value("a red fox, in the snow")  # state survives the switch
    expect(page.locator("#txt2img-output img").first).to_be_visible()


def test_controlnet_reference_shows_canny_preview(page, studio_url, tmp_path):
    from huabu.ui.tabs.controlnet import preview_control_map

    reference = tmp_path / "reference.png"
    image = Image.new("RGB", (96, 80), (230, 220, 200))
    ImageDraw.Draw(image).rectangle((20, 16, 70, 60), fill=(30, 60, 160))
    image.save(reference)

    page.click("#tab-controlnet-button")
    page.set_input_files("#controlnet-reference input[type=file]", str(reference))
    expect(page.locator("#controlnet-reference img").first).to_be_visible()
    page.locator("#controlnet-resolution input[type=number]").fill("80")
    page.locator("#controlnet-resolution input[type=number]").press("Enter")
    page.click("#controlnet-preview")
    shown = page.locator("#controlnet-map img").first
    expect(shown).to_be_visible()
    body = page.request.get(shown.get_attribute("src")).body()
    with Image.open(io.BytesIO(body)) as picture:
        control_map = np.asarray(picture.convert("RGB"))
    expected = np.asarray(preview_control_map(studio_url[0], str(reference), "canny", 100, 200, 80))
    assert control_map.shape == expected.shape == (80, 96, 3)
    assert np.array_equal(control_map, expected)
    assert set(np.unique(control_map)) == {0, 255} and (control_map == 255).any()



def shown_map(page, after: str | None = None) -> tuple[np.ndarray, str]:
    """The control map the tab shows (once its src differs from `after`), as RGB pixels, and its src."""
    shown = page.locator("#controlnet-map img").first
    expect(shown).to_be_visible()
    if after is not None:
        expect(shown).not_to_have_attribute("src", after)
    src = shown.get_attribute("src")
    with Image.open(io.BytesIO(page.request.get(src).body())) as picture:
        return np.asarray(picture.convert("RGB")), src


def ink_outside(control_map: np.ndarray, *boxes: tuple[int, int, int, int]) -> int:
    """How many lit pixels of the map lie outside all `boxes` (X0, Y0, X1, Y1, in the map's pixels)."""
    lit = control_map.max(axis=2) > 0
    for x0, y0, x1, y1 in boxes:
        lit[max(y0, 0):y1, max(x0, 0):x1] = False
    return int(lit.sum())


def draw_rectangle(page, width: int, height: int, box: tuple[int, int, int, int]) -> None:
    """Trace `box` (output pixels) with a thin brush on the box canvas, which shows a black width x height blank."""
    canvas = page.locator("#controlnet-box-canvas canvas").first
    canvas.scroll_into_view_if_needed()
    page.wait_for_timeout(1000)  # the blank image is laid out and fitted (zoomed) to the editor
    area = canvas.bounding_box()
    with Image.open(io.BytesIO(page.screenshot(clip=area))) as picture:
        ys, xs = np.nonzero(np.asarray(picture.convert("RGB")).max(axis=2) < 16)  # the blank image on screen
    left, top = area["x"] + xs.min(), area["y"] + ys.min()
    scale_x, scale_y = (xs.max() + 1 - xs.min()) / width, (ys.max() + 1 - ys.min()) / height
    assert abs(scale_x - scale_y) < 0.05 * scale_x, "the blank canvas is not shown at the output's aspect"
    brush = page.get_by_role("button", name="Brush", exact=True)
    brush.click()
    page.get_by_role("button", name="Brush Size", exact=True).click()
    page.locator("#controlnet-box-canvas input[type=range]").fill("3")
    brush.click()  # closes the size picker, which would otherwise take the first press on the canvas
    x0, y0, x1, y1 = box
    page.mouse.move(left + x0 * scale_x, top + y0 * scale_y)
    page.mouse.down()
    for x, y in ((x1, y0), (x1, y1), (x0, y1), (x0, y0)):
        page.mouse.move(left + x * scale_x, top + y * scale_y, steps=12)
    page.mouse.up()


def test_controlnet_glyph_words_in_typed_then_drawn_box(page):
    from huabu.core.text_boxes import auto_boxes
    from huabu.ui.tabs.controlnet import glyph_request, preview_glyph_map

    width, height, prompt, words, typed = 256, 192, 'a shop sign that says "ignored"', "画布\nok", (16, 8, 120, 64)
    (auto,) = auto_boxes(1, width, height)  # where "ok", the word without a box, goes
    page.click("#tab-controlnet-button")
    expect(page.locator("#controlnet-words")).to_be_hidden()
    page.locator("#controlnet-module input").click()
    page.get_by_role("option", name="Glyph (words drawn in boxes)").click()
    expect(page.locator("#controlnet-words")).to_be_visible()  # the glyph group shows, the reference's preview hides
    expect(page.locator("#controlnet-box-canvas")).to_be_visible()
    expect(page.locator("#controlnet-preview")).to_be_hidden()
    for name, value in (("width", width), ("height", height)):
        size = page.locator(f"#controlnet-{name} input[type=number]")
        size.fill(str(value))
        size.press("Enter")
    page.locator("#controlnet-prompt textarea").fill(prompt)
    page.locator("#controlnet-words textarea").fill(words)
    page.locator("#controlnet-boxes textarea").fill(",".join(map(str, typed)))
    page.click("#controlnet-glyph-preview")
    control_map, src = shown_map(page)
    fields = dict(prompt=prompt, width=width, height=height)
    expected = np.asarray(preview_glyph_map(glyph_request(fields, words, ",".join(map(str, typed)), None)))
    assert control_map.shape == expected.shape == (height, width, 3)
    assert np.array_equal(control_map, expected)
    x0, y0, x1, y1 = typed
    assert (control_map[y0:y1, x0:x1] == 255).sum() > 50  # 画布 is written in the typed box
    assert ink_outside(control_map, typed, auto) == 0

    # with the boxes field empty, a box drawn on a blank canvas of the output's size takes 画布 instead
    page.locator("#controlnet-boxes textarea").fill("")
    page.click("#controlnet-new-canvas")
    drag = (40, 130, 216, 180)  # output pixels, clear of the typed box and of "ok"'s automatic box
    draw_rectangle(page, width, height, drag)
    page.click("#controlnet-glyph-preview")
    drawn, _ = shown_map(page, after=src)
    assert drawn.shape == (height, width, 3)
    x0, y0, x1, y1 = drag
    assert (drawn[y0:y1, x0:x1] == 255).sum() > 50
    slack = 6  # the stroke's half width (the box bounds the stroke) and the screen-to-pixel rounding
    assert ink_outside(drawn, (x0 - slack, y0 - slack, x1 + slack, y1 + slack), auto) == 0
    lit = drawn.max(axis=2) > 0
    lit[auto[1]:auto[3], auto[0]:auto[2]] = False
    rows = np.nonzero(lit.any(axis=1))[0]
    assert rows.max() + 1 - rows.min() > 0.8 * (y1 - y0)  # 画布 is fitted to the drawn box, not just placed in it
