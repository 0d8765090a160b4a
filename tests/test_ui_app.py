"""The studio's page as built (no server): every visible text follows the language toggle, the tabs and limits are
the ones the issue asks for, and `huabu studio` is registered."""

from __future__ import annotations

import pytest
from ui_support import ui_settings


@pytest.fixture(scope="module")
def built(model_store, tmp_path_factory):
    from huabu.ui.app import Studio

    studio = Studio(ui_settings(model_store, tmp_path_factory.mktemp("ui-app")), "zh")
    return studio, studio.build()


def _texts_of(block) -> dict[str, str]:
    """The visible texts of a component: its label (when shown), a button's or markdown's value, an info line."""
    import gradio as gr

    found = {}
    label = getattr(block, "label", None)
    if isinstance(label, str) and label and getattr(block, "show_label", True) is not False:
        found["label"] = label
    if isinstance(block, (gr.Button, gr.Markdown)) and isinstance(block.value, str) and block.value:
        found["value"] = block.value
    if isinstance(getattr(block, "info", None), str) and block.info:
        found["info"] = block.info
    return found


def test_every_visible_text_is_relabelled_by_the_toggle(built):
    studio, demo = built
    registered = {id(c) for c in studio.labels.components}
    missing = [(type(b).__name__, _texts_of(b)) for b in demo.blocks.values()
               if _texts_of(b) and id(b) not in registered and getattr(b, "elem_id", None) != "language"]
    assert missing == []


def test_language_updates_carry_the_other_table(built):
    from huabu.ui.i18n import load_texts

    studio, _ = built
    en, zh = load_texts("en"), load_texts("zh")
    components = studio.labels.components
    tab_updates = {c.elem_id: u for c, u in zip(components, studio.labels.updates("en"))
                   if (c.elem_id or "").startswith("tab-")}
    assert tab_updates["tab-txt2img"]["label"] == en["tab.txt2img"]
    assert tab_updates["tab-gallery"]["label"] == en["tab.gallery"]
    assert [c.label for c in components if (c.elem_id or "").startswith("tab-")] == [
        zh[f"tab.{t}"] for t in ("txt2img", "img2img", "inpaint", "controlnet", "lora", "video", "apps", "extras",
                                  "tools", "gallery", "settings")]
    # Prompt-book chips switch to the English labels and keep their values (the part's English name).
    chips = next((c, u) for c, u in zip(components, studio.labels.updates("en"))
                 if c.elem_id == "txt2img-chips-subject")
    assert ("年轻女子", "Young woman") in chips[0].choices
    assert ("Young woman", "Young woman") in chips[1]["choices"]
    # Updates change labels only, never values (so prompts and images survive a switch).
    assert all("value" not in u or c.__class__.__name__ in ("Button", "Markdown")
               for c, u in zip(components, studio.labels.updates("en")))


def test_sliders_use_the_engine_limits(built):
    import gradio as gr

    _, demo = built
    sliders = {b.elem_id: b for b in demo.blocks.values() if isinstance(b, gr.Slider)}
    assert (sliders["txt2img-steps"].minimum, sliders["txt2img-steps"].maximum) == (1, 150)
    assert (sliders["txt2img-cfg"].minimum, sliders["txt2img-cfg"].maximum) == (0, 30)
    assert (sliders["txt2img-width"].maximum, sliders["txt2img-batch-size"].maximum) == (4096, 16)
    samplers = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "txt2img-sampler")
    assert ("Euler a", "Euler a") in samplers.choices and ("DPM++ 2M", "DPM++ 2M") in samplers.choices


def test_generation_runs_queued_with_one_engine_slot(built):
    _, demo = built
    by_name = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name}
    for name in ("txt2img", "img2img", "inpaint", "controlnet", "video", "extras"):
        assert by_name[name].queue is True
        assert by_name[name].concurrency_id == "engine" and by_name[name].concurrency_limit == 1
    for name in ("txt2img_interrupt", "gallery_search", "png_info", "set_language"):
        assert by_name[name].queue is False


def test_studio_command_is_registered(monkeypatch, huabu_env):
    from huabu.cli import main as cli
    from huabu.ui import app

    launched = {}
    monkeypatch.delenv("HUABU_STUDIO_AUTH", raising=False)
    monkeypatch.setattr(app.Studio, "launch", lambda self, host, port, quiet, auth: launched.update(
        host=host, port=port, language=self.language, model=self.settings.default_model, auth=auth))
    assert "huabu.cli.studio:register" in cli.COMMANDS
    assert cli.main(["studio", "--language", "en", "--port", "7999", "--model", "tiny-sd"]) == 0
    assert launched == {"host": "127.0.0.1", "port": 7999, "language": "en", "model": "tiny-sd", "auth": None}
    with pytest.raises(SystemExit):
        cli.main(["studio", "--share"])


def test_settings_tab_shows_the_memory_switches_and_applying_them_reloads_with_them(model_store, tmp_path):
    from huabu.ui.app import Studio

    studio = Studio(ui_settings(model_store, tmp_path).with_(vae_tiling=True), "en")
    demo = studio.build()
    values = {b.elem_id: b.value for b in demo.blocks.values()
              if (getattr(b, "elem_id", None) or "").startswith("settings-") and hasattr(b, "value")}
    assert (values["settings-offload"], values["settings-vae-tiling"], values["settings-attention-slicing"]) == \
        ("none", True, False)
    engine = studio.engine
    studio.set_memory(vae_tiling=True)  # unchanged: the loaded models stay
    assert studio.engine is engine
    studio.set_memory(attention_slicing=True, vae_tiling=False)
    assert studio.engine is not engine and studio.engine.gallery is studio.gallery
    assert (studio.engine.settings.attention_slicing, studio.engine.settings.vae_tiling) == (True, False)


def test_extras_tab_upscales_with_the_engine_upscale_and_saves_the_result(built, tmp_path):
    import gradio as gr
    import numpy as np
    from PIL import Image

    from huabu.core.pnginfo import read_parameters, save_png_atomic
    from huabu.engine.upscalers import upscale
    from huabu.ui.tabs.extras import upscale_image

    studio, _ = built
    source = Image.fromarray((np.indices((16, 12)).sum(0) % 2 * 255).astype(np.uint8)).convert("RGB")
    save_png_atomic(source, tmp_path / "in.png", "a cat\nSteps: 2, Seed: 3")
    prefs = {"outputs_dir": str(tmp_path / "out")}
    shown, status = upscale_image(studio, str(tmp_path / "in.png"), "by", 2, 512, 512, True, "Nearest", "None", 0,
                                  "en", prefs)
    saved = tmp_path / "out" / "extras" / "extras-0000.png"
    assert str(saved) in status and "24x32" in status and read_parameters(saved) == "a cat\nSteps: 2, Seed: 3"
    expected = upscale(source, (24, 32), "Nearest", studio.engine.upscalers)  # what /extra-single-image answers
    assert np.array_equal(np.asarray(Image.open(shown).convert("RGB")), np.asarray(expected))
    upscale_image(studio, str(tmp_path / "in.png"), "to", 2, 40, 24, True, "Lanczos", "Nearest", 0.3, "zh", prefs)
    assert Image.open(tmp_path / "out" / "extras" / "extras-0001.png").size == (40, 24)
    with pytest.raises(gr.Error, match=studio.texts["en"]["error.no_image"]):
        upscale_image(studio, None, "by", 2, 512, 512, True, "None", "None", 0, "en", prefs)
    with pytest.raises(gr.Error, match="unknown upscaler '4x-Nope'"):
        upscale_image(studio, str(tmp_path / "in.png"), "by", 2, 512, 512, True, "4x-Nope", "None", 0, "en", prefs)


def test_img2img_batch_request_reads_the_folders(tmp_path):
    import gradio as gr
    from PIL import Image

    from huabu.core.errors import InvalidRequest
    from huabu.ui.i18n import load_texts
    from huabu.ui.tabs.generate import batch_request

    texts = load_texts("en")
    (tmp_path / "in").mkdir()
    (tmp_path / "masks").mkdir()
    for name in ("b", "a"):
        Image.new("RGB", (32, 32), "red").save(tmp_path / "in" / f"{name}.png")
        Image.new("L", (32, 32), 255).save(tmp_path / "masks" / f"{name}.png")
    fields = dict(prompt="a cat", steps=2, seed=4)
    request, outdir = batch_request(fields, 0.6, str(tmp_path / "in"), "", str(tmp_path / "masks"), texts)
    assert outdir is None and request.denoising_strength == 0.6 and request.script.name == "img2img batch"
    assert [p.rsplit("/", 1)[1] for p in request.script.args["images"]] == ["a.png", "b.png"]
    assert request.script.args["masks"] == [str(tmp_path / "masks" / name) for name in ("a.png", "b.png")]
    _, outdir = batch_request(fields, 0.6, f" {tmp_path / 'in'} ", str(tmp_path / "out"), None, texts)
    assert outdir == str(tmp_path / "out")
    with pytest.raises(gr.Error, match=texts["error.no_folder"]):
        batch_request(fields, 0.6, " ", "", "", texts)
    with pytest.raises(InvalidRequest, match="has no mask named like a.png"):
        batch_request(fields, 0.6, str(tmp_path / "in"), "", str(tmp_path), texts)


def test_prompt_book_chips_insert_chinese_for_a_model_that_reads_it(built, tmp_path):
    import gradio as gr
    from test_models import chinese_reading_folder

    studio, demo = built
    chips = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "txt2img-chips-subject")
    on_chip = next(f.fn for f in demo.fns.values() if (chips._id, "select") in f.targets)
    on = gr.SelectData(chips, {"index": 0, "value": "Red fox", "selected": True})
    off = gr.SelectData(chips, {"index": 0, "value": "Red fox", "selected": False})
    bilingual = str(chinese_reading_folder(tmp_path))
    assert on_chip("snow", {"model": "huabu-tiny"}, on) == "snow, a red fox"
    assert on_chip("snow", {"model": bilingual}, on) == "snow, 红狐狸"
    assert on_chip("snow, 红狐狸, dusk", {"model": "huabu-tiny"}, off) == "snow, dusk"  # either text comes out


def test_send_to_fills_the_advanced_options_and_resets_those_the_text_does_not_state(built):
    def by_id(elem_id):
        return next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)

    def send_fn(button_id):
        button = by_id(button_id)
        event = next(f for f in demo.fns.values() if (button._id, "click") in f.targets)
        return event.fn, [block._id for block in event.outputs]

    def sent(button_id, text):
        fn, ids = send_fn(button_id)
        return {block_id: update.get("value") for block_id, update in zip(ids, fn(text, None))
                if isinstance(update, dict)}

    studio, demo = built
    text = ("a cat\nNegative prompt: dog\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 5, "
            "Size: 64x64, VAE: no-such-vae.safetensors, Variation seed: 9, Variation seed strength: 0.3, "
            "Seed resize from: 32x48, Denoising strength: 0.5, Hires upscale: 2.5, Hires steps: 3, "
            "Hires upscaler: Latent (nearest), Shift: 3")
    filled = sent("gallery-send-txt2img", text)
    values = {elem: filled[by_id(elem)._id] for elem in (
        "txt2img-seed", "txt2img-subseed", "txt2img-subseed-strength", "txt2img-seed-resize-w",
        "txt2img-seed-resize-h", "txt2img-shift", "txt2img-vae", "txt2img-hires-enable", "txt2img-hires-upscaler",
        "txt2img-hires-scale", "txt2img-hires-steps", "txt2img-hires-denoising")}
    assert values == {"txt2img-seed": 5, "txt2img-subseed": 9, "txt2img-subseed-strength": 0.3,
                      "txt2img-seed-resize-w": 32, "txt2img-seed-resize-h": 48, "txt2img-shift": 3.0,
                      "txt2img-vae": "Automatic",  # a VAE this studio lacks: the dropdown keeps what it offers
                      "txt2img-hires-enable": True, "txt2img-hires-upscaler": "Latent (nearest)",
                      "txt2img-hires-scale": 2.5, "txt2img-hires-steps": 3, "txt2img-hires-denoising": 0.5}

    plain = sent("gallery-send-txt2img", "a dog\nSteps: 4, Sampler: Euler, CFG scale: 5, Seed: 6, Size: 64x64")
    assert [plain[by_id(elem)._id] for elem in ("txt2img-subseed-strength", "txt2img-shift", "txt2img-hires-enable",
                                                 "txt2img-seed-resize-w")] == [0, 0, False, 0]
    to_img2img = sent("gallery-send-img2img", text)
    assert to_img2img[by_id("img2img-subseed")._id] == 9 and to_img2img[by_id("img2img-shift")._id] == 3.0
