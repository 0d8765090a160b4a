"""The studio in a real browser (Debian's headless Chromium driven by playwright): type a prompt, generate, see
the image and its parameters in the gallery; switch to Chinese without losing the prompt; upload a reference and
see its canny map. Skipped, with the reason, where chromium or playwright is missing (scripts/install.sh --dev
installs both)."""

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
