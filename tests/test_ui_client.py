"""The studio served on 127.0.0.1 and driven with gradio_client, on the session's tiny model: images come back
with their parameters and land in the gallery; errors are one line; progress shows steps; Interrupt stops the run;
and the page and cheap routes answer while a generation holds the engine."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from PIL import Image

from ui_support import GatedEngine, serving, ui_settings


@pytest.fixture(scope="module")
def app(model_store, tmp_path_factory):
    from gradio_client import Client

    from huabu.ui.app import Studio

    engine = GatedEngine(ui_settings(model_store, tmp_path_factory.mktemp("ui-client")))
    studio = Studio(engine.settings, "en", engine=engine)
    with serving(studio) as url:
        yield studio, engine, url, Client(url, verbose=False)


def _wait(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_txt2img_returns_image_and_records_it_in_the_gallery(app):
    from huabu.gallery import read_parameters

    studio, _, _, client = app
    images, parameters, status = client.predict(prompt="a red fox", negative_prompt="blurry", steps=3, seed=1234,
                                                api_name="/txt2img")
    assert parameters.startswith("a red fox\nNegative prompt: blurry\nSteps: 3, Sampler: DPM++ 2M")
    assert "Seed: 1234" in parameters and "Model: tiny-sd" in parameters
    assert status == "Done: 1 image(s), first seed 1234."
    with Image.open(images[0]["image"]) as shown:
        assert shown.size == (32, 32)
        assert read_parameters(shown) == parameters  # a downloaded image keeps its parameters
    item = studio.gallery.search("red fox")[0]
    assert (item.kind, item.prompt, item.params["Seed"], item.params["Steps"]) == ("txt2img", "a red fox", 1234, 3)
    assert read_parameters(item.path) == parameters
    listed = client.predict(text="red fox", kind="", api_name="/gallery_search")
    assert [entry["caption"] for entry in listed] == ["a red fox"]


def test_styles_are_applied_by_the_engine(app):
    from huabu.prompts.book import apply_styles

    studio, _, _, client = app
    _, parameters, _ = client.predict(prompt="a cat", styles=["photo_film"], steps=2, seed=7, api_name="/txt2img")
    styled, negative = apply_styles("a cat", "", ["photo_film"], studio.book)
    assert parameters.startswith(f"{styled}\nNegative prompt: {negative}\nSteps: 2")


def test_bad_input_is_one_readable_line(app):
    from gradio_client.exceptions import AppError

    _, _, _, client = app
    with pytest.raises(AppError) as err:
        client.predict(prompt="a cat", width=30, steps=2, api_name="/txt2img")
    assert str(err.value) == "width 30 is not a multiple of 4 (this model's VAE factor); use 28 or 32"


def test_unexpected_failure_shows_a_generic_line(app, monkeypatch, caplog):
    from gradio_client.exceptions import AppError

    studio, engine, _, client = app
    monkeypatch.setattr(engine.models, "load", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("secret detail")))
    with pytest.raises(AppError) as err:
        client.predict(prompt="a cat", steps=2, api_name="/txt2img")
    assert str(err.value) == studio.texts["en"]["error.generic"]
    assert "secret detail" in caplog.text  # the traceback goes to the log


def test_page_and_cheap_route_answer_while_a_generation_runs(app):
    from gradio_client import Client

    _, engine, url, client = app
    engine.entered.clear()
    engine.gate = threading.Event()
    try:
        job = client.submit(prompt="a slow owl", steps=2, seed=5, api_name="/txt2img")
        assert engine.entered.wait(60)
        page = httpx.get(url, timeout=30)
        assert page.status_code == 200 and "huabu" in page.text
        other_user = Client(url, verbose=False)
        assert isinstance(other_user.predict(text="", kind="", api_name="/gallery_search"), list)
        assert not job.done()
    finally:
        engine.gate.set()
        engine.gate = None
    assert job.result(timeout=60)[2] == "Done: 1 image(s), first seed 5."


def test_progress_shows_steps_and_interrupt_stops_the_run(app):
    _, engine, _, client = app
    engine.stepped.clear()
    engine.step_gate = threading.Event()
    try:
        job = client.submit(prompt="a dog", steps=10, seed=9, api_name="/txt2img")
        assert engine.stepped.wait(60)
        progress = _wait(lambda: job.status().progress_data, "progress")
        assert (progress[0].index, progress[0].length, progress[0].unit) == (1, 10, "steps")
        assert progress[0].desc == "Image 1–1 of 1: step 1/10"
        assert client.predict(api_name="/txt2img_interrupt") == "Stopping after the current step…"
    finally:
        engine.step_gate.set()
        engine.step_gate = None
    images, _, status = job.result(timeout=60)
    assert status == "Interrupted: 1 unfinished image(s), first seed 9."
    assert len(images) == 1 and engine.steps == 1
    assert client.predict(api_name="/txt2img_interrupt") == "Nothing is running."
