"""Textual inversion embeddings (huabu.engine.embeddings): an embedding holding a word's own token vectors draws
exactly what the word draws (weighted, negative, multi-vector, SDXL), TI hashes, pickle refused, the A1111 listing;
hypernetwork tags fail in one line."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from huabu.core.errors import PromptSyntaxError, UnsafeCheckpoint
from huabu.core.pnginfo import parse_infotext
from huabu.core.requests import GenerateRequest
from huabu.engine.embeddings import list_embeddings


def _rows(pipe, words: str, encoder: str = "text_encoder", tokenizer: str = "tokenizer") -> torch.Tensor:
    ids = getattr(pipe, tokenizer)(words, add_special_tokens=False)["input_ids"]
    return getattr(pipe, encoder).get_input_embeddings().weight[ids].detach().clone()


def _draw(engine, model, prompt: str, negative: str = "", **fields):
    request = GenerateRequest.create(prompt=prompt, negative_prompt=negative, model=model, steps=3, seed=11,
                                     width=32, height=32, **fields)
    result = engine.generate(request)
    return np.asarray(result.images[0], dtype=np.int16), result.infotexts[0]


@pytest.fixture(scope="module")
def embeddings(engine, model_store, settings):
    pipe = engine.models.load(str(model_store["folder"])).pipeline
    folder = settings.embeddings_dir
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": _rows(pipe, "red")}, folder / "zqred.safetensors")
    save_file({"emb_params": _rows(pipe, "red apple")}, folder / "sub" / "zq-two.safetensors")
    save_file({"emb_params": torch.zeros(1, 48)}, folder / "zqwide.safetensors")
    torch.save({"string_to_param": {"*": _rows(pipe, "blue")}, "step": 120, "sd_checkpoint": "abc123",
                "sd_checkpoint_name": "tiny-sd", "name": "zqpickled"}, folder / "zqpickled.pt")
    return folder


def test_an_embedding_of_a_words_vectors_draws_that_word(engine, model_store, embeddings):
    model = str(model_store["folder"])
    word, _ = _draw(engine, model, "a red cat")
    emb, infotext = _draw(engine, model, "a ZQRED cat")
    assert np.array_equal(word, emb)
    assert not np.array_equal(word, _draw(engine, model, "a cat")[0])
    digest = hashlib.sha256((embeddings / "zqred.safetensors").read_bytes()).hexdigest()[:12]
    params = parse_infotext(infotext)
    assert params["TI hashes"] == f"zqred: {digest}"  # the file's name, as A1111 writes it
    assert params["Prompt"] == "a ZQRED cat"  # the infotext keeps the name as written


def test_multi_vector_weighted_and_negative_embeddings(engine, model_store, embeddings):
    model = str(model_store["folder"])
    weighted = _draw(engine, model, "a (zq-two:1.4), cat")[0]
    assert np.array_equal(weighted, _draw(engine, model, "a (red apple:1.4), cat")[0])
    assert np.array_equal(_draw(engine, model, "a cat", "zq-two")[0], _draw(engine, model, "a cat", "red apple")[0])
    # a word that merely contains a name is left alone
    assert "TI hashes" not in parse_infotext(_draw(engine, model, "zqredder cat")[1])


def test_pickle_embeddings_need_permission(engine, model_store, embeddings, settings):
    from huabu.engine.generate import Engine

    with pytest.raises(UnsafeCheckpoint, match="zqpickled.pt is a pickle"):
        _draw(engine, str(model_store["folder"]), "a zqpickled cat")
    trusting = Engine(settings.with_(allow_unsafe_pickle=True), models=engine.models)
    model = str(model_store["folder"])
    assert np.array_equal(_draw(trusting, model, "a zqpickled cat")[0], _draw(engine, model, "a blue cat")[0])


def test_an_embedding_of_another_width_is_refused(engine, model_store, embeddings):
    with pytest.raises(Exception, match="zqwide has 48-wide vectors but this model's text encoder takes 32"):
        _draw(engine, str(model_store["folder"]), "zqwide")


def test_listing_has_a1111s_shape(embeddings):
    listing = list_embeddings(embeddings, 32, allow_pickle=False)
    assert listing["loaded"]["zqred"] == {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                          "shape": 32, "vectors": 1}
    assert listing["loaded"]["zq-two"]["vectors"] == 2
    assert listing["skipped"]["zqwide"]["shape"] == 48
    assert listing["skipped"]["zqpickled"]["shape"] is None  # not read without permission
    trusted = list_embeddings(embeddings, 32, allow_pickle=True)["loaded"]["zqpickled"]
    assert trusted == {"step": 120, "sd_checkpoint": "abc123", "sd_checkpoint_name": "tiny-sd", "shape": 32,
                       "vectors": 1}


def test_sdxl_embeddings_with_clip_l_and_clip_g(engine, model_store, embeddings):
    model = str(model_store["sdxl"])
    pipe = engine.models.load(model).pipeline
    save_file({"clip_l": _rows(pipe, "green"), "clip_g": _rows(pipe, "green", "text_encoder_2", "tokenizer_2")},
              embeddings / "zqxl.safetensors")
    assert np.array_equal(_draw(engine, model, "a zqxl cat")[0], _draw(engine, model, "a green cat")[0])


def test_hypernetwork_tags_are_a_one_line_error(engine, model_store):
    for prompt, negative in (("a <hypernet:anime:0.8> cat", ""), ("a cat", "<hypernet:bad:1>")):
        with pytest.raises(PromptSyntaxError, match=r"<hypernet:\w+:[\d.]+>: hypernetworks are not supported"):
            _draw(engine, str(model_store["folder"]), prompt, negative)


def test_a1111_embeddings_route_and_a_generation_that_uses_one(engine, model_store, tmp_path):
    from fastapi.testclient import TestClient
    from server_support import LOCAL, TINY, api_settings, make_app

    settings = api_settings(model_store, tmp_path / "home")
    pipe = engine.models.load(str(model_store["folder"])).pipeline
    settings.embeddings_dir.mkdir(parents=True)
    save_file({"emb_params": _rows(pipe, "red apple")}, settings.embeddings_dir / "zqapi.safetensors")
    save_file({"emb_params": torch.zeros(3, 48)}, settings.embeddings_dir / "zqapiwide.safetensors")
    with TestClient(make_app(settings, engine), base_url=LOCAL) as client:
        listing = client.get("/sdapi/v1/embeddings").json()
        assert listing["loaded"] == {"zqapi": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                               "shape": 32, "vectors": 2}}
        assert listing["skipped"]["zqapiwide"]["vectors"] == 3
        body = client.post("/sdapi/v1/txt2img", json={"prompt": "zqapi", "seed": 4, **TINY}).json()
    assert parse_infotext(json.loads(body["info"])["infotexts"][0])["TI hashes"].startswith("zqapi: ")
