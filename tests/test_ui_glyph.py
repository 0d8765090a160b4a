"""The ControlNet tab's glyph module: boxes from drawn layers, the glyph map preview (the engine's own map), and a
generation whose request carries the glyph unit and `text_boxes` as `huabu generate --control glyph --text-box`
builds it, so the PNG records `Text boxes`."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from ui_support import serving, ui_settings

from huabu.core.errors import InvalidRequest
from huabu.core.text_boxes import auto_boxes
from huabu.engine.generate import Engine
from huabu.ui.fields import box_from_layer, drawn_boxes, text_boxes_field

PROMPT = 'a shop sign that says "画布"'


def _layer(path, size: tuple[int, int], outline: tuple[int, int, int, int]) -> str:
    """An editor layer, transparent but for a rectangle outline drawn as a brush would."""
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    x0, y0, x1, y1 = outline
    pixels = np.asarray(layer).copy()
    pixels[y0:y1, x0:x0 + 2] = pixels[y0:y1, x1 - 2:x1] = (255, 64, 64, 255)
    pixels[y0:y0 + 2, x0:x1] = pixels[y1 - 2:y1, x0:x1] = (255, 64, 64, 255)
    Image.fromarray(pixels).save(path)
    return str(path)


def test_the_box_of_a_drawn_layer_and_the_text_boxes_the_fields_give(tmp_path):
    alpha = np.zeros((40, 50), np.uint8)
    alpha[5:21, 10] = alpha[5:21, 30] = alpha[5, 10:31] = alpha[20, 10:31] = 255  # an outline, pixels 10..30 x 5..20
    assert box_from_layer(alpha) == (10, 5, 31, 21)
    assert box_from_layer(np.zeros((8, 8), np.uint8)) is None
    empty = str(tmp_path / "empty.png")
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(empty)
    editor = {"background": None, "layers": [_layer(tmp_path / "a.png", (32, 32), (2, 4, 30, 14)), empty,
                                             _layer(tmp_path / "b.png", (32, 32), (8, 16, 24, 30))]}
    assert drawn_boxes(editor, None, None) == [(2, 4, 30, 14), (8, 16, 24, 30)]
    assert drawn_boxes(editor, 64, 96) == [(4, 12, 60, 42), (16, 48, 48, 90)]  # canvas -> output pixels
    drawn = [(2, 4, 30, 14)]
    assert text_boxes_field("", "", drawn) == [[2, 4, 30, 14]]  # for the prompt's quoted words, as --text-box
    assert text_boxes_field("画布\n\nOK\n", "1,2,3,4", drawn) == [{"text": "画布", "box": [1, 2, 3, 4]},
                                                                  {"text": "OK", "box": None}]  # typed boxes win
    assert text_boxes_field("画布", "", drawn) == [{"text": "画布", "box": [2, 4, 30, 14]}]
    with pytest.raises(InvalidRequest, match="2 boxes for 1 words"):
        text_boxes_field("画布", "0,0,8,8\n0,8,8,16")
    with pytest.raises(InvalidRequest, match="X0,Y0,X1,Y1"):
        text_boxes_field("画布", "here")


class RecordingEngine(Engine):
    """A real Engine that keeps the requests it was given."""

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.requests = []

    def generate(self, request, *args, **kwargs):
        self.requests.append(request)
        return super().generate(request, *args, **kwargs)


@pytest.fixture(scope="module")
def app(model_store, tmp_path_factory):
    """The studio served, with a tiny glyph ControlNet as the only one in its ControlNet folder."""
    from conftest import build_tiny_controlnet
    from diffusers import UNet2DConditionModel
    from gradio_client import Client

    from huabu.ui.app import Studio

    home = tmp_path_factory.mktemp("ui-glyph")
    unet = UNet2DConditionModel.from_pretrained(model_store["folder"] / "unet")
    build_tiny_controlnet(unet, seed=21).save_pretrained(home / "controlnet" / "tiny-glyph")
    engine = RecordingEngine(replace(ui_settings(model_store, home), controlnet_dir=home / "controlnet"))
    studio = Studio(engine.settings, "en", engine=engine)
    with serving(studio) as url:
        yield engine, Client(url, verbose=False)


def test_the_glyph_preview_is_the_engines_glyph_map(app, tmp_path):
    from gradio_client import handle_file

    from huabu.engine.control.glyph import glyph_map

    _, client = app
    editor = {"background": None, "layers": [handle_file(_layer(tmp_path / "box.png", (64, 64), (4, 4, 60, 28)))],
              "composite": None}
    shown = client.predict(prompt=PROMPT, words="画布\nOK", boxes="", canvas=editor, width=64, height=64,
                           api_name="/controlnet_glyph_preview")
    expected = glyph_map([("画布", (4, 4, 60, 28)), ("OK", auto_boxes(1, 64, 64)[0])], 64, 64)
    with Image.open(shown) as image:
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(expected))
    assert np.asarray(expected).max() == 255  # words were drawn


def test_a_glyph_generation_sends_the_clis_unit_and_text_boxes_and_records_them(app, model_store):
    import argparse

    from huabu.cli.images import request_from_args, request_from_infotext
    from huabu.cli.options import add_generation_options
    from huabu.core.pnginfo import parse_infotext

    engine, client = app
    _, parameters, status = client.predict(prompt=PROMPT, steps=2, seed=3, width=64, height=64, reference=None,
                                           module="glyph", words="", boxes="4,8,60,30", api_name="/controlnet")
    assert status == "Done: 1 image(s), first seed 3."
    assert parse_infotext(parameters)["Text boxes"] == '[["画布", 4, 8, 60, 30]]'
    assert "Module: glyph, Model: tiny-glyph [" in parameters
    sent = engine.requests[-1]
    parser = argparse.ArgumentParser()
    add_generation_options(parser)
    cli = request_from_args(parser.parse_args([PROMPT, "--control", "glyph", "--text-box", "4,8,60,30"]), "txt2img")
    assert sent.controlnets == cli.controlnets and sent.text_boxes == cli.text_boxes
    assert [(t.text, t.box) for t in sent.text_boxes] == [("画布", [4, 8, 60, 30])]
    remade = request_from_infotext(parameters, str(model_store["folder"]), None, None)
    assert [(t.text, t.box) for t in remade.text_boxes] == [("画布", [4, 8, 60, 30])]
    assert remade.controlnets[0].module == "glyph"
