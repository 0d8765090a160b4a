"""Textual inversion training (huabu.training.embedding, `huabu train embedding`) on a tiny random model: only the
new vectors change, the output is A1111's safetensors layout, a stopped run resumes to the same vectors, and the
engine draws with the file it wrote."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from huabu.core.errors import InvalidRequest
from huabu.core.requests import GenerateRequest
from huabu.training.diffusion import object_masks
from huabu.training.embedding import setup, train
from huabu.training.embedding_config import EmbeddingTrainConfig


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ti-data")
    for i, colour in enumerate(((220, 40, 40), (40, 220, 40), (40, 40, 220))):
        image = Image.new("RGB", (32, 32), colour)
        image.paste((250, 250, 250), (8 + i, 8, 20 + i, 20))
        image.save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"a zqtrained on a plain background {i}", encoding="utf-8")
    return folder


def _config(model_store, data, out, **fields):
    return EmbeddingTrainConfig(**{"data": str(data), "token": "zqtrained", "init_word": "red apple", "vectors": 2,
                                   "model": str(model_store["folder"]), "out": str(out), "steps": 6,
                                   "batch_size": 2, "lr": 0.05, "checkpoint_every": 3, **fields})


def _vectors(path) -> torch.Tensor:
    with safe_open(path, framework="pt") as f:
        return f.get_tensor("emb_params")


def test_training_writes_a1111_vectors_and_resumes_exactly(model_store, data, tmp_path, engine, settings):
    straight = train(_config(model_store, data, tmp_path / "straight"))
    with safe_open(straight, framework="pt") as f:
        assert f.metadata()["step"] == "6" and f.metadata()["name"] == "zqtrained"
        vectors = f.get_tensor("emb_params")
    assert vectors.shape == (2, 32) and vectors.dtype == torch.float16
    pipe = engine.models.load(str(model_store["folder"])).pipeline
    ids = pipe.tokenizer("red apple", add_special_tokens=False)["input_ids"]
    start = pipe.text_encoder.get_input_embeddings().weight[ids].detach().half()
    assert (vectors - start).abs().max() > 0.05  # learnt away from the init word's vectors

    calls = iter(range(100))
    stopped = _config(model_store, data, tmp_path / "stopped")
    train(stopped, cancel=lambda: next(calls) >= 3)  # stops after step 3, leaving its checkpoint
    resumed = train(stopped)
    assert torch.equal(_vectors(resumed), vectors)

    settings.embeddings_dir.mkdir(parents=True, exist_ok=True)
    (settings.embeddings_dir / "zqtrained.safetensors").write_bytes(straight.read_bytes())
    fields = dict(model=str(model_store["folder"]), steps=3, seed=4, width=32, height=32)
    used = engine.generate(GenerateRequest.create(prompt="a zqtrained", **fields)).images[0]
    plain = engine.generate(GenerateRequest.create(prompt="a red apple", **fields)).images[0]
    assert np.abs(np.asarray(used, np.int16) - np.asarray(plain, np.int16)).max() > 0


def test_max_norm_caps_the_vectors_and_cosine_changes_the_run(model_store, data, tmp_path):
    free = _vectors(train(_config(model_store, data, tmp_path / "free", lr=0.5)))
    assert free.float().norm(dim=-1).max() > 0.1
    capped = _vectors(train(_config(model_store, data, tmp_path / "capped", lr=0.5, max_norm=0.05)))
    assert capped.float().norm(dim=-1).max() == pytest.approx(0.05, abs=1e-3)  # fp16 rounding
    cosine = _vectors(train(_config(model_store, data, tmp_path / "cosine", lr=0.5, lr_schedule="cosine")))
    assert not torch.equal(cosine, free)  # the later steps take smaller learning rates


def test_object_masks_cover_what_differs_from_the_border_and_weight_the_loss(model_store, data, tmp_path):
    image = np.full((1, 32, 32, 3), 40, np.uint8)
    image[0, 8:16, 16:24] = 250
    mask = object_masks(image, 8)[0, 0]
    assert mask.shape == (8, 8) and mask.sum() == 4 and mask[2:4, 4:6].min() == 1
    plain = _vectors(train(_config(model_store, data, tmp_path / "plain")))
    weighted = _vectors(train(_config(model_store, data, tmp_path / "weighted", object_weight=4.0)))
    assert not torch.equal(plain, weighted)


def test_the_background_prior_is_zero_at_the_init_words_vectors_and_then_acts(model_store, data, tmp_path):
    # "red apple" is two tokens and the vectors start as theirs: the prior caption then encodes to the same, and
    # only the object-weighted loss is left.
    plain, _ = setup(_config(model_store, data, tmp_path / "p0"))
    prior, _ = setup(_config(model_store, data, tmp_path / "p1", background_prior=10.0))
    assert prior.step(0).item() == pytest.approx(plain.step(0).item(), rel=1e-6)
    free = _vectors(train(_config(model_store, data, tmp_path / "free", lr=0.5)))
    held = _vectors(train(_config(model_store, data, tmp_path / "held", lr=0.5, background_prior=10.0)))
    assert not torch.equal(free, held)


def test_bad_configs_are_one_line_errors(model_store, data, tmp_path):
    base = _config(model_store, data, tmp_path / "x")
    for changes, message in (({"token": "two words"}, "give the embedding a name"),
                             ({"vectors": 0}, "--vectors must be between 1 and 75"),
                             ({"max_norm": -1.0}, "--max-norm must be 0"),
                             ({"object_weight": -1.0}, "--object-weight must be 0 or positive"),
                             ({"background_prior": -1.0}, "--background-prior must be 0 or positive"),
                             ({"lr_schedule": "linear"}, "learning-rate schedule must be one of constant, cosine"),
                             ({"model": str(tmp_path)}, "embeddings train on huabu-tiny or a diffusers folder")):
        with pytest.raises(InvalidRequest, match=message):
            train(replace(base, **changes))
    (data / "img0.txt").write_text("no token here", encoding="utf-8")
    try:
        with pytest.raises(InvalidRequest, match="img0.png does not name the token 'zqtrained'"):
            train(base)
    finally:
        (data / "img0.txt").write_text("a zqtrained on a plain background 0", encoding="utf-8")
