"""Text in images (AnyText-like): glyph maps, quoted prompt words and their boxes, the `Text boxes` infotext field and
reproduce, the glyph unit in the APIs, huabu-tiny's text scenes, OCR scores, eval-text and glyph ControlNet training."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from huabu.core.errors import InvalidRequest
from huabu.core.requests import GenerateRequest
from huabu.core.text_boxes import auto_boxes, format_text_boxes, parse_box, parse_text_boxes, quoted_words
from huabu.engine.control import preprocess
from huabu.engine.ocr import edit_distance, ned

HAS_OCR = importlib.util.find_spec("rapidocr") is not None and importlib.util.find_spec("onnxruntime") is not None


def _white(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L")) > 127


def test_glyph_map_draws_each_word_white_inside_its_box_only():
    image = preprocess("glyph", None, texts=["画布", "OPEN"], boxes=[(8, 6, 56, 30), (70, 80, 120, 110)],
                       width=128, height=112)
    assert image.size == (128, 112) and image.mode == "RGB"
    white = _white(image)
    inside = np.zeros_like(white)
    inside[6:30, 8:56] = inside[80:110, 70:120] = True
    assert white[~inside].sum() == 0
    assert white[6:30, 8:56].sum() > 100  # the two Chinese characters have strokes
    assert white[80:110, 70:120].sum() > 60
    # each word is as large as fits: its ink reaches across most of its box
    ys, xs = np.nonzero(white[6:30, 8:56])
    assert xs.max() - xs.min() > 0.7 * 48 and ys.max() - ys.min() > 0.6 * 24


def test_glyph_map_lays_out_words_without_boxes_and_refuses_bad_input(tmp_path):
    image = preprocess("glyph", None, texts=["一二", "AB"], width=80, height=80)
    boxes = auto_boxes(2, 80, 80)
    white = _white(image)
    assert all(white[y0:y1, x0:x1].sum() > 10 for x0, y0, x1, y1 in boxes)
    assert boxes[0][3] <= boxes[1][1] and all(0 <= v <= 80 for box in boxes for v in box)
    with pytest.raises(InvalidRequest, match="needs words"):
        preprocess("glyph", None, texts=[])
    with pytest.raises(InvalidRequest, match="2 boxes for 1 words"):
        preprocess("glyph", None, texts=["a"], boxes=[(0, 0, 9, 9), (0, 0, 9, 9)])
    with pytest.raises(InvalidRequest, match="cannot read font"):
        bad = tmp_path / "bad.ttf"
        bad.write_text("not a font")
        preprocess("glyph", None, texts=["a"], font=str(bad))


def test_preprocess_cli_writes_the_glyph_map(tmp_path, capsys):
    from huabu.cli.main import main

    out = tmp_path / "glyph.png"
    assert main(["preprocess", "glyph", "--text", "画布", "--box", "4,4,60,28", "--text", "HI", "--box",
                 "10,40,50,60", "--size", "64x64", "-o", str(out)]) == 0
    white = _white(Image.open(out))
    assert white.shape == (64, 64) and white[4:28, 4:60].sum() > 50 and white[40:60, 10:50].sum() > 20
    assert white[:, 60:].sum() == 0
    assert main(["preprocess", "canny", str(out), "--text", "x", "-o", str(tmp_path / "x.png")]) == 2
    assert "options of the glyph module" in capsys.readouterr().err


def test_prompt_quotes_become_the_words_of_the_text_boxes():
    assert quoted_words('a shop sign that says "画布" on a red background') == ["画布"]
    assert quoted_words('"OPEN" and “开业” and "" then "a b"') == ["OPEN", "开业", "a b"]
    assert parse_box("1,2,30,40") == (1, 2, 30, 40)
    for bad in ("1,2,3", "5,5,2,9", "a,b,c,d", "-1,0,4,4"):
        with pytest.raises(ValueError):
            parse_box(bad)
    request = GenerateRequest.create(prompt='says "画布" and "OPEN"', text_boxes=[[0, 0, 10, 10], {"text": "X"}])
    assert [(b.text, b.box) for b in request.text_boxes] == [("画布", [0, 0, 10, 10]), ("X", None)]
    with pytest.raises(InvalidRequest, match="text box 2 has no word"):
        GenerateRequest.create(prompt='says "画布"', text_boxes=[[0, 0, 10, 10], [0, 10, 10, 20]])
    with pytest.raises(InvalidRequest, match="0 <= x0 < x1"):
        GenerateRequest.create(prompt='"a"', text_boxes=[[10, 0, 5, 10]])
    assert "text_boxes" not in GenerateRequest.create(prompt="x").to_data()  # old requests keep their JSON


def test_glyph_control_spec_and_text_box_options_from_the_cli():
    from huabu.core.control_units import parse_control_spec, units_from_cli

    assert parse_control_spec("glyph") == {"module": "glyph"}
    assert parse_control_spec("glyph:0.8:0:0.5") == {"module": "glyph", "weight": 0.8, "guidance_start": 0.0,
                                                      "guidance_end": 0.5}
    with pytest.raises(ValueError, match="glyph takes no image"):
        parse_control_spec("glyph:ref.png")
    assert units_from_cli(["glyph:0.5"], [])[0]["weight"] == 0.5


def test_text_boxes_infotext_round_trip_through_the_png_reader(tmp_path):
    from huabu.core.fields import infotext_to_request_fields, request_to_infotext_params
    from huabu.core.pnginfo import create_infotext, parse_infotext, read_parameters, save_png_atomic

    assert parse_text_boxes(format_text_boxes([("画, \"布\"", (1, 2, 3, 4))])) == [
        {"text": '画, "布"', "box": [1, 2, 3, 4]}]
    request = GenerateRequest.create(prompt='a sign that says "画布" and "OPEN"', seed=1, width=64, height=64,
                                     text_boxes=[[4, 4, 60, 28], [4, 34, 60, 60]])
    params = request_to_infotext_params(request)
    assert params["Text boxes"] == '[["画布", 4, 4, 60, 28], ["OPEN", 4, 34, 60, 60]]'
    path = save_png_atomic(Image.new("RGB", (8, 8)), tmp_path / "t.png",
                           create_infotext(request.prompt, "", params, "test"))
    parsed = parse_infotext(read_parameters(path))
    fields = infotext_to_request_fields(parsed)
    assert fields["text_boxes"] == [{"text": "画布", "box": [4, 4, 60, 28]}, {"text": "OPEN", "box": [4, 34, 60, 60]}]
    assert GenerateRequest.create(**fields).text_boxes == request.text_boxes
    unplaced = GenerateRequest.create(prompt='"a"', text_boxes=[{"text": "a"}])
    assert request_to_infotext_params(unplaced)["Text boxes"] is None  # written once the engine placed the words
    with pytest.raises(InvalidRequest, match="Text boxes"):
        infotext_to_request_fields({"Text boxes": "[[1, 2]]"})


@pytest.fixture(scope="module")
def glyph_net(model_store, tmp_path_factory) -> Path:
    from conftest import build_tiny_controlnet
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model_store["folder"] / "unet")
    folder = tmp_path_factory.mktemp("glyph") / "tiny-glyph"
    build_tiny_controlnet(unet, seed=21).save_pretrained(folder)
    return folder


def test_the_glyph_unit_steers_generation_records_words_and_boxes_and_reproduce_rebuilds_the_map(
        engine, model_store, glyph_net, tmp_path):
    from huabu.cli.images import request_from_infotext
    from huabu.engine.control.glyph import glyph_map

    prompt = 'a sign that says "画布" and "OK"'
    base = dict(prompt=prompt, model=str(model_store["folder"]), steps=2, seed=5, width=64, height=64)
    unit = {"module": "glyph", "model": str(glyph_net)}
    plain = engine.generate(GenerateRequest.create(**base))
    steered = engine.generate(GenerateRequest.create(**base, controlnets=[unit], text_boxes=[[4, 4, 60, 28]]))
    a, b = (np.asarray(r.images[0], dtype=np.int16) for r in (plain, steered))
    assert np.abs(a - b).mean() > 1.0
    # the second word had no box: laid out automatically, and the box it got is recorded
    auto = auto_boxes(1, 64, 64)[0]
    infotext = steered.infotexts[0]
    assert f'Text boxes: "[[\\"画布\\", 4, 4, 60, 28], [\\"OK\\", {", ".join(map(str, auto))}]]"' in infotext
    assert "Module: glyph" in infotext
    remade_request = request_from_infotext(infotext, str(model_store["folder"]), None, None)
    assert [(t.text, t.box) for t in remade_request.text_boxes] == [("画布", [4, 4, 60, 28]), ("OK", list(auto))]
    assert remade_request.controlnets[0].module == "glyph" and remade_request.controlnets[0].image is None
    remade_request = remade_request.model_copy(update={"controlnets": [
        remade_request.controlnets[0].model_copy(update={"model": str(glyph_net)})]})
    remade = engine.generate(remade_request)
    assert np.array_equal(np.asarray(remade.images[0]), np.asarray(steered.images[0]))
    expected = glyph_map([("画布", (4, 4, 60, 28)), ("OK", auto)], 64, 64)
    assert np.array_equal(_white(expected), _white(glyph_map(
        [(t.text, tuple(t.box)) for t in remade_request.text_boxes], 64, 64)))
    with pytest.raises(InvalidRequest, match="no words to draw"):
        engine.generate(GenerateRequest.create(**{**base, "prompt": "no quotes"}, controlnets=[unit]))
    with pytest.raises(InvalidRequest, match="longer than 64"):
        engine.generate(GenerateRequest.create(**{**base, "prompt": f'"{"x" * 65}"'}, controlnets=[unit]))


def test_reproduce_cli_remakes_a_glyph_image_from_the_png_alone(engine, model_store, glyph_net, huabu_env, capsys):
    from huabu.cli.main import main

    out = huabu_env / "out"
    argv = ["generate", 'the words "画布"', "--model", "tiny-sd", "--control", "glyph", "--controlnet-model",
            str(glyph_net), "--text-box", "4,8,60,30", "--size", "64x64", "--steps", "2", "--seed", "3", "-o",
            str(out)]
    assert main(argv) == 0
    made = sorted(out.glob("*.png"))[0]
    capsys.readouterr()
    assert main(["reproduce", str(made), "--controlnet-model", str(glyph_net)]) == 0
    assert capsys.readouterr().out.strip() == "match"


def test_the_glyph_unit_in_the_a1111_api_and_the_native_request(client_catalog):
    from huabu.server.a1111 import Txt2ImgRequest, to_generate

    req = Txt2ImgRequest.model_validate({"prompt": 'a sign "画布" and "OK"', "width": 64, "height": 64,
                                         "alwayson_scripts": {"controlnet": {"args": [
                                             {"module": "glyph", "model": "tiny-glyph", "weight": 0.9,
                                              "text_boxes": [[1, 2, 30, 20], {"text": "OK", "box": [1, 30, 30, 50]}]}
                                         ]}}})
    request, warnings = to_generate(req, client_catalog, "txt2img")
    assert not [w for w in warnings if "text_boxes" in w]
    assert [(u.module, u.model, u.weight, u.image) for u in request.controlnets] == [("glyph", "tiny-glyph", 0.9,
                                                                                     None)]
    assert [(t.text, t.box) for t in request.text_boxes] == [("画布", [1, 2, 30, 20]), ("OK", [1, 30, 30, 50])]
    native = GenerateRequest.from_data({"prompt": '"画布"', "controlnets": [{"module": "glyph"}],
                                        "text_boxes": [[0, 0, 32, 16]]})
    assert native.to_data()["text_boxes"] == [{"text": "画布", "box": [0, 0, 32, 16]}]


@pytest.fixture
def client_catalog(engine, model_store, tmp_path):
    from fastapi.testclient import TestClient
    from server_support import LOCAL, api_settings, make_app

    app = make_app(api_settings(model_store, tmp_path / "home"), engine)
    with TestClient(app, base_url=LOCAL) as test_client:
        yield test_client.app.state.huabu.catalog


def test_text_scenes_are_deterministic_held_out_and_drawn_from_a_fixed_vocabulary():
    from huabu.tiny import text_scenes as T

    assert len(T.CJK_VOCAB) == len(set(T.CJK_VOCAB)) == 524 and len(T.LATIN_VOCAB) == 52
    assert len(set(T.VOCABULARY)) >= 500
    first = [T.training_text_scene(3, i) for i in range(60)]
    assert first == [T.training_text_scene(3, i) for i in range(60)]
    assert first != [T.training_text_scene(4, i) for i in range(60)]
    assert np.array_equal(T.render_text_scene(first[0]), T.render_text_scene(T.training_text_scene(3, 0)))
    for scene in first:
        chars, shortest, longest = T.SCRIPTS[scene.script]
        assert shortest <= len(scene.text) <= longest and set(scene.text) <= set(chars)
        assert f'"{scene.text}"' in scene.caption and scene.background in scene.caption
        assert not T.is_held_out_string(scene.text)
        x0, y0, x1, y1 = scene.box
        assert 0 <= x0 < x1 <= T.TEXT_IMAGE_SIZE and 0 <= y0 < y1 <= T.TEXT_IMAGE_SIZE
    assert {s.script for s in first} == {"zh", "latin"}
    held = T.eval_text_scenes(20)
    assert held == T.eval_text_scenes(20) and [s.script for s in held] == ["zh"] * 10 + ["latin"] * 10
    assert all(T.is_held_out_string(s.text) for s in held) and len({s.text for s in held}) == 20
    # the scene's text is exactly where its glyph map is white, in the text colour
    scene = held[0]
    image, mask = T.render_text_scene(scene), _white(T.scene_glyph_map(scene))
    colour = np.asarray(T.text_colour(scene.background))
    assert mask.sum() > 30 and np.abs(image[mask].astype(int) - colour).max(axis=1).mean() < 40


def test_ned_and_edit_distance_as_anytext_defines_them():
    assert edit_distance("kitten", "sitting") == 3
    assert ned("abc", "abc") == 1.0 and ned("", "") == 1.0
    assert ned("abd", "abc") == pytest.approx(2 / 3)
    assert ned("", "画布") == 0.0 and ned("画", "画布") == 0.5
    assert ned("HUABU", "HUAB") == pytest.approx(0.8)


def test_glyph_controlnet_training_maps_and_two_steps_through_the_tiny_cli(model_store, huabu_env, tmp_path, capsys):
    from huabu.cli.main import main
    from huabu.tiny import text_scenes as T
    from huabu.training.controlnet import control_maps

    data = tmp_path / "text-scenes"
    assert main(["tiny", "data", "--text", "--count", "6", "--seed", "2", "--out", str(data)]) == 0
    from huabu.tiny.data import load_dataset

    dataset = load_dataset(data)
    assert dataset.images.shape == (6, 128, 128, 3) and "text_boxes" in dataset.attrs[0]
    maps = control_maps("glyph", dataset.images[:2], dataset.attrs[:2])
    expected = [np.asarray(T.scene_glyph_map(T.training_text_scene(2, i))) for i in range(2)]
    assert np.array_equal((maps.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8), np.stack(expected))
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["tiny", "train", "controlnet", "--type", "glyph", "--base", str(model_store["folder"]), "--data",
                 str(data), "--out", str(out), "--steps", "2", "--batch-size", "2", "--samples", "2",
                 "--sample-steps", "1", "--embedding-channels", "16,32,64"]) == 0
    assert capsys.readouterr().out.strip().endswith(str(out / "final"))
    assert (out / "final" / "diffusion_pytorch_model.safetensors").is_file()
    assert (out / "samples-0000002.png").is_file()
    # the captions are encoded as the engine encodes a prompt beside a glyph unit: quoted words as placeholders
    from huabu.training.controlnet import train_controlnet
    from huabu.training.controlnet_config import ControlNetTrainConfig

    words = [T.training_text_scene(2, i).text for i in range(6)]
    assert all(f'"{word}"' in caption for word, caption in zip(words, dataset.captions))
    train_controlnet(ControlNetTrainConfig(type="glyph", base=str(model_store["folder"]), out=str(tmp_path / "r"),
                                           steps=1, batch_size=2, sample_every=0, embedding_channels=(16, 32, 64)),
                     data=dataset)
    assert all('"*"' in caption and f'"{word}"' not in caption for word, caption in zip(words, dataset.captions))


@pytest.mark.skipif(not HAS_OCR, reason="rapidocr and onnxruntime are not installed (the dev extra has them)")
def test_ocr_reads_a_real_text_scene_and_eval_text_reports_on_a_few_strings(model_store, glyph_net, huabu_env,
                                                                              capsys):
    from huabu.cli.main import main
    from huabu.engine.ocr import read_box
    from huabu.tiny import text_scenes as T
    from huabu.tiny.eval_text import format_text_report
    from huabu.training.controlnet import fill_text_boxes

    scene = T.eval_text_scenes(2)[1]  # a Latin one
    image = T.render_text_scene(scene)
    assert read_box(image, scene.box) == scene.text
    # glyph training on images without boxes: OCR finds the word and a box around the drawn one, once
    data = SimpleNamespace(images=image[None], captions=[scene.caption])
    fill_text_boxes(data)
    [[text, x0, y0, x1, y1]] = data.attrs[0]["text_boxes"]
    bx0, by0, bx1, by1 = scene.box
    assert text == scene.text and x0 < bx1 and bx0 < x1 and y0 < by1 and by0 < y1
    assert main(["tiny", "eval-text", "--model", str(model_store["folder"]), "--controlnet", str(glyph_net),
                 "--count", "2", "--steps", "1", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert set(result["glyph"]) == set(result["no_glyph"]) == set(result["ceiling"]) == {"zh", "latin"}
    assert result["ceiling"]["latin"] == {"accuracy": 1.0, "ned": 1.0, "count": 1}
    assert result["layout"]["real"] == {"background": 1.0, "position": 1.0}
    for key in ("glyph", "no_glyph"):  # a random model writes nothing legible
        assert 0.0 <= result[key]["zh"]["ned"] < 0.5
    assert "Chinese (1)" in format_text_report(result) and result["controlnet"] == "tiny-glyph"
    # a LoRA that is not there stops the run, named in one line
    assert main(["tiny", "eval-text", "--model", str(model_store["folder"]), "--controlnet", str(glyph_net),
                 "--count", "2", "--steps", "1", "--lora", "no-such-lora"]) == 2
    error = capsys.readouterr().err.strip()
    assert "no-such-lora" in error and "\n" not in error


@pytest.mark.skipif(not HAS_OCR, reason="rapidocr and onnxruntime are not installed (the dev extra has them)")
def test_eval_text_puts_its_lora_into_every_request(engine, model_store, glyph_net):
    from huabu.tiny.demo_configs import TextEvalConfig
    from huabu.tiny.eval_text import evaluate_text

    class Recording:  # the real engine, each request recorded and run without the (made-up) LoRA
        def __init__(self) -> None:
            self.models, self.controlnets, self.requests = engine.models, engine.controlnets, []

        def generate(self, request):
            self.requests.append(request)
            return engine.generate(request.model_copy(update={"loras": []}))

    recording = Recording()
    result = evaluate_text(TextEvalConfig(model=str(model_store["folder"]), controlnet=str(glyph_net), count=2,
                                          steps=1, lora="made-up"), engine=recording)
    assert [bool(r.controlnets) for r in recording.requests] == [True, True, False, False]
    assert all([lora.name for lora in r.loras] == ["made-up"] for r in recording.requests)
    assert result["settings"]["lora"] == "made-up"


def test_a_larger_pass_draws_the_glyph_map_at_its_own_size(engine, model_store, glyph_net):
    from huabu.engine.control.glyph import glyph_map
    from huabu.engine.controlnets import check_units, with_words

    request = GenerateRequest.create(prompt='a sign that says "画布"', model=str(model_store["folder"]), width=64,
                                     height=64, controlnets=[{"module": "glyph", "model": str(glyph_net)}],
                                     text_boxes=[[4, 4, 60, 28]])
    units, _ = with_words(check_units(request.controlnets), request, 64, 64)
    plan = engine.controlnets.plan(units, engine.models.load(str(model_store["folder"])))
    hires = plan.control_map(units[0], 128, 128)  # the hires fix's second pass: boxes scaled, strokes drawn sharp
    assert np.array_equal(np.asarray(hires), np.asarray(glyph_map([("画布", (8, 8, 120, 56))], 128, 128)))
    stretched = plan.control_map(units[0], 128, 96)  # another aspect: the request's map fitted by the resize mode
    assert stretched.size == (128, 96) and _white(stretched)[60:, :].sum() == 0


def test_beside_a_glyph_unit_quoted_words_are_encoded_as_placeholders(engine, model_store, glyph_net):
    from huabu.core.text_boxes import with_placeholders

    assert with_placeholders('says "画布" and “OPEN”, "" stays') == 'says "*" and "*", "" stays'
    base = dict(model=str(model_store["folder"]), steps=2, seed=5, width=32, height=32, enable_hr=True, hr_scale=2,
                hr_second_pass_steps=1, denoising_strength=0.5, text_boxes=[{"text": "画布", "box": [2, 2, 30, 14]}])
    unit = {"module": "glyph", "model": str(glyph_net)}
    words = engine.generate(GenerateRequest.create(prompt='a sign that says "画布"', hr_prompt='big "画布"',
                                                   controlnets=[unit], **base))
    stars = engine.generate(GenerateRequest.create(prompt='a sign that says "*"', hr_prompt='big "*"',
                                                   controlnets=[unit], **base))
    assert np.array_equal(np.asarray(words.images[0]), np.asarray(stars.images[0]))
    assert words.infotexts[0].startswith('a sign that says "画布"')  # the prompt as written is what is recorded
    plain = {key: value for key, value in base.items() if key != "text_boxes"}
    without = [engine.generate(GenerateRequest.create(prompt=f'a sign that says "{word}"', **plain)).images[0]
               for word in ("画布", "*")]
    assert not np.array_equal(*(np.asarray(image) for image in without))  # no glyph unit: the words are encoded


def test_eval_text_with_hires_makes_each_scene_at_half_size_then_the_hires_fix(engine, model_store, glyph_net):
    from huabu.tiny import text_scenes as T
    from huabu.tiny.demo_configs import TextEvalConfig
    from huabu.tiny.eval_text import evaluate_text, format_text_report

    class Recording:  # the real engine, each request recorded (with the Lanczos upscaler: no model's 2x is here)
        def __init__(self) -> None:
            self.models, self.controlnets, self.requests = engine.models, engine.controlnets, []

        def generate(self, request):
            self.requests.append(request)
            return engine.generate(request)

    recording = Recording()
    cfg = TextEvalConfig(model=str(model_store["folder"]), controlnet=str(glyph_net), count=2, steps=1, hires=0.5,
                         hires_steps=1, upscaler="Lanczos")
    result = evaluate_text(cfg, engine=recording)
    scenes = T.eval_text_scenes(2, cfg.scene_seed)
    assert all((r.width, r.height, r.enable_hr, r.hr_scale, r.denoising_strength) == (64, 64, True, 2, 0.5)
               for r in recording.requests)
    assert [r.text_boxes[0].box for r in recording.requests[:2]] == [[v // 2 for v in s.box] for s in scenes]
    assert result["settings"]["hires"] == {"denoise": 0.5, "steps": 1, "upscaler": "Lanczos"}
    assert "made at 64 px, then the hires fix 2x with Lanczos" in format_text_report(result)
