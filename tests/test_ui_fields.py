"""The studio's pure parts: i18n tables, infotext -> fields, prompt-book chips, styles, LoRA tags, masks, jobs."""

from __future__ import annotations

import logging
import re
import string

import pytest
import yaml
from PIL import Image

from huabu.core.errors import InvalidRequest
from huabu.core.pnginfo import create_infotext
from huabu.engine.prompts.book import PromptPart, apply_styles, load_book
from huabu.ui import fields
from huabu.ui.i18n import I18N_DIR, LANGUAGES, load_texts


@pytest.fixture(scope="module")
def book():
    return load_book()


def _fields_of(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_i18n_tables_have_identical_keys_and_fields():
    raw = {lang: yaml.safe_load((I18N_DIR / f"{lang}.yaml").read_text(encoding="utf-8")) for lang in LANGUAGES}
    assert set(raw["zh"]) == set(raw["en"])
    assert len(raw["en"]) > 100
    for key in raw["en"]:
        assert raw["zh"][key].strip() and raw["en"][key].strip(), key
        assert _fields_of(raw["zh"][key]) == _fields_of(raw["en"][key]), key
    assert load_texts("zh") == raw["zh"]


def test_i18n_chinese_table_is_chinese():
    zh, en = load_texts("zh"), load_texts("en")
    cjk = re.compile(r"[\u4e00-\u9fff]")
    # Every text holding English words in en has Chinese in zh, except names that stay as they are.
    untranslated = [k for k in en if cjk.search(zh[k]) is None and re.search(r"[a-z]{3}", en[k])
                    and k != "tab.lora"]
    assert untranslated == []
    named = [zh[f"tab.{t}"] for t in ("txt2img", "img2img", "inpaint", "video", "gallery", "settings")]
    assert named + [zh["prompt.book"]] == ["文生图", "图生图", "局部重绘", "视频", "画廊", "设置", "咒语书"]


def test_unknown_language_is_a_one_line_error():
    with pytest.raises(InvalidRequest, match="language must be one of zh, en"):
        load_texts("fr")


def test_infotext_to_fields_round_trip():
    params = {"Steps": 12, "Sampler": "Euler a", "Schedule type": "Uniform", "CFG scale": "6.5", "Seed": 42,
              "Size": "64x48", "Model hash": "0123456789", "Model": "tiny-sd", "Denoising strength": "0.6",
              "Clip skip": 2, "Mask blur": 3}
    text = create_infotext("a red fox, snow\nsecond line", "blurry, (lowres:1.2)", params, "0.1.0")
    assert fields.fields_from_infotext(text) == {
        "prompt": "a red fox, snow\nsecond line", "negative_prompt": "blurry, (lowres:1.2)", "sampler": "Euler a",
        "schedule_type": "Uniform", "steps": 12, "cfg_scale": 6.5, "seed": 42, "width": 64, "height": 48,
        "clip_skip": 2, "denoising_strength": 0.6, "mask_blur": 3, "model": "tiny-sd"}


def test_infotext_combined_sampler_name_is_split_and_unknown_one_left_out():
    old = "a cat\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x512"
    assert fields.fields_from_infotext(old)["sampler"] == "DPM++ 2M"
    assert fields.fields_from_infotext(old)["schedule_type"] == "Karras"
    assert fields.fields_from_infotext(old)["negative_prompt"] == ""
    odd = "a cat\nSteps: 20, Sampler: Restart, CFG scale: 7, Seed: 1, Size: 512x512"
    assert "sampler" not in fields.fields_from_infotext(odd)
    assert fields.fields_from_infotext(odd)["steps"] == 20


def test_prompt_book_chip_adds_and_removes_english_text(book):
    fox = next(p for p in book.parts if p.category == "subject" and p.en == "Red fox")
    snow = PromptPart("background", "Snow", "雪", "snowy field, falling snow")
    prompt = fields.toggle_part("", fox, True)
    assert prompt == fox.prompt == "a red fox"
    prompt = fields.toggle_part(prompt, snow, True)
    assert prompt == "a red fox, snowy field, falling snow"
    assert fields.toggle_part(prompt, snow, True) == prompt  # already there: unchanged
    assert fields.toggle_part(prompt, fox, False) == "snowy field, falling snow"
    assert fields.toggle_part("my own words, A Red Fox", fox, False) == "my own words"


def test_style_preview_is_apply_styles(book):
    names = ["photo_film", "watercolor"]
    expected_prompt, expected_negative = apply_styles("a cat", "blurry", names, book)
    assert fields.styled_preview("a cat", "blurry", names, book) == f"{expected_prompt}\n---\n{expected_negative}"
    assert "a cat" in expected_prompt and expected_prompt != "a cat"
    assert fields.styled_preview("a cat", "", [], book) == ""
    with pytest.raises(InvalidRequest, match="unknown style"):
        fields.styled_preview("a cat", "", ["no_such_style"], book)


def test_lora_tags_are_set_replaced_and_removed():
    prompt = fields.set_lora_tag("a cat", "ink", 0.8)
    assert prompt == "a cat <lora:ink:0.8>"
    assert fields.set_lora_tag(prompt, "ink", 1.0) == "a cat <lora:ink:1>"
    assert fields.set_lora_tag(prompt, "ink", 0) == "a cat"
    with pytest.raises(InvalidRequest):
        fields.set_lora_tag("a cat", "bad:name", 1)


def test_slider_bounds_come_from_the_request_model():
    assert fields.field_bounds("steps") == (1, 150)
    assert fields.field_bounds("batch_size") == (1, 16)
    assert fields.size_or_default(0) is None and fields.size_or_default(64.0) == 64
    assert fields.field_bounds("shift") == (0.0, 100.0)  # an open lower bound: 0 in the studio is "the model's"


def test_a_shift_of_zero_in_the_studio_is_the_models_own():
    from huabu.ui.tabs.advanced import advanced_fields

    assert advanced_fields(["vae", "shift"], ["Automatic", 0]) == {"vae": None, "shift": None}
    assert advanced_fields(["shift"], [2.5]) == {"shift": 2.5}


def test_mask_from_editor_marks_painted_pixels():
    background = Image.new("RGBA", (8, 6), (10, 20, 30, 255))
    layer = Image.new("RGBA", (8, 6), (0, 0, 0, 0))
    layer.putpixel((2, 3), (255, 255, 255, 255))
    image, mask = fields.mask_from_editor({"background": background, "layers": [layer], "composite": background})
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (10, 20, 30)
    assert mask.getpixel((2, 3)) == 255 and mask.histogram()[255] == 1 and mask.histogram()[0] == 47
    with pytest.raises(InvalidRequest, match="mask is empty"):
        fields.mask_from_editor({"background": background, "layers": [Image.new("RGBA", (8, 6))]})
    with pytest.raises(InvalidRequest, match="upload an image"):
        fields.mask_from_editor(None)


def test_interrupt_flags_are_per_session():
    from huabu.ui.jobs import Interrupts

    flags = Interrupts()
    assert flags.interrupt("a") is False
    first, second = flags.start("a"), flags.start("b")
    assert flags.interrupt("a") is True
    assert first.is_set() and not second.is_set()
    flags.finish("a", first)
    assert flags.interrupt("a") is False


def test_progress_reporter_passes_steps():
    from huabu.engine.job import Progress
    from huabu.ui.jobs import progress_reporter

    calls = []
    report = progress_reporter(lambda value, desc, unit: calls.append((value, desc, unit)),
                               "{first}-{last}/{total} {step}/{steps}")
    report(Progress(iteration=1, n_iter=2, step=3, steps=20, first_image=2, batch_size=2, total_images=4))
    assert calls == [((3, 20), "3-4/4 3/20", "steps")]


def test_readable_errors_give_one_line(caplog):
    import gradio as gr

    from huabu.ui.jobs import readable_errors

    texts = load_texts("en")
    with pytest.raises(gr.Error) as err, readable_errors(texts):
        raise InvalidRequest("width 30 is not a multiple of 4")
    assert err.value.message == "width 30 is not a multiple of 4"
    with caplog.at_level(logging.ERROR), pytest.raises(gr.Error) as err, readable_errors(texts):
        raise KeyError("internal detail")
    assert err.value.message == texts["error.generic"]
    assert "internal detail" not in err.value.message
    assert "Traceback" in caplog.text or caplog.records[-1].exc_info is not None


def test_training_uploads_are_collected_safely(tmp_path):
    import zipfile

    from huabu.ui.tabs.lora import collect_training_data

    uploads = tmp_path / "uploads"
    for sub in ("a", "b"):
        (uploads / sub).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(uploads / sub / "cat.png")
        (uploads / sub / "cat.txt").write_text(f"cat {sub}")
    (uploads / "a" / "notes.doc").write_text("ignored")
    files = [str(p) for p in sorted(uploads.rglob("*")) if p.is_file()]
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.write(uploads / "a" / "cat.png", "10_cats/dog.png")
        bundle.writestr("10_cats/dog.txt", "a dog")
        bundle.writestr("10_cats/.hidden.png", "x")
    data = collect_training_data(files, str(archive), tmp_path / "data")
    found = sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file())
    assert found == ["10_cats/dog.png", "10_cats/dog.txt", "cat-1.png", "cat-1.txt", "cat.png", "cat.txt"]
    assert {(data / "cat.txt").read_text(), (data / "cat-1.txt").read_text()} == {"cat a", "cat b"}

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as bundle:
        bundle.writestr("../outside.png", "x")
    with pytest.raises(InvalidRequest, match="unsafe path"):
        collect_training_data([], str(evil), tmp_path / "data2")
    assert not (tmp_path / "outside.png").exists()
    with pytest.raises(InvalidRequest, match="no training images"):
        collect_training_data([str(uploads / "a" / "notes.doc")], None, tmp_path / "data3")
