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


def test_studio_hires_fix_variation_seed_and_outpainting(app, tmp_path):
    from gradio_client import handle_file

    from huabu.core.pnginfo import parse_infotext

    _, _, _, client = app
    images, parameters, _ = client.predict(prompt="a blue kite", steps=2, seed=5, enable_hr=True, hr_scale=2,
                                           hr_steps=1, hr_denoising=0.5, subseed=9, subseed_strength=0.5,
                                           api_name="/txt2img")
    parsed = parse_infotext(parameters)
    assert (parsed["Hires upscale"], parsed["Hires steps"], parsed["Variation seed"]) == (2, 1, 9)
    with Image.open(images[0]["image"]) as shown:
        assert shown.size == (64, 64)
    source = tmp_path / "in.png"
    Image.new("RGB", (32, 32), (200, 40, 40)).save(source)
    images, parameters, _ = client.predict(prompt="a blue kite", steps=2, seed=5, init_image=handle_file(str(source)),
                                           denoising_strength=0.9, left=16, api_name="/img2img")
    assert parse_infotext(parameters)["Outpaint"] == "left 16 right 0 up 0 down 0"
    with Image.open(images[0]["image"]) as shown:
        assert shown.size == (48, 32)


def test_txt2img_returns_image_and_records_it_in_the_gallery(app):
    from huabu.core.pnginfo import read_parameters

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
    from huabu.engine.prompts.book import apply_styles

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


def test_lora_training_streams_loss_and_installs_the_lora(app, tmp_path):
    import zipfile

    from gradio_client import handle_file

    studio, _, _, client = app
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for i in range(2):
            image = tmp_path / f"img{i}.png"
            Image.new("RGB", (32, 32), (200, 20 + 60 * i, 20)).save(image)
            bundle.write(image, f"3_red/img{i}.png")
            bundle.writestr(f"3_red/img{i}.txt", "zqx red square")
    assert client.predict(api_name="/train_lora_cancel") == "No training is running."
    job = client.submit(
        folder=None,
        archive=handle_file(str(archive)),
        name="red_test",
        steps=3,
        rank=4,
        alpha=4,
        lr=1e-3,
        resolution=32,
        sample_prompt="zqx",
        sample_every=3,
        api_name="/train_lora",
    )
    loss, samples, status = job.result(timeout=300)
    written = studio.settings.loras_dir / "red_test.safetensors"
    assert status == f"Done: 3/3 steps, written to {written}."
    assert [row[0] for row in loss["data"]] == [1, 2, 3] and all(row[1] > 0 for row in loss["data"])
    with Image.open(samples[0]["image"]) as sample:
        assert sample.size == (32, 32)
    listed = client.predict(None, api_name="/lora_list")
    assert [value for _, value in listed["choices"]] == ["red_test"]

    from gradio_client.exceptions import AppError

    installed = written.read_bytes()
    with pytest.raises(AppError) as err:  # the same name again: the installed LoRA is kept, not overwritten
        client.predict(folder=None, archive=handle_file(str(archive)), name="red_test", steps=1, rank=4, alpha=4,
                       lr=1e-3, resolution=32, sample_prompt="", sample_every=0, api_name="/train_lora")
    assert str(err.value) == "A LoRA named red_test is already installed; pick another name (or delete it first)."
    assert written.read_bytes() == installed


def test_video_tab_makes_a_playable_video(app):
    import imageio.v3 as iio
    from video_support import tiny_motion_adapter

    studio, _, _, client = app
    tiny_motion_adapter().save_pretrained(studio.settings.motion_dir / "tiny-motion")
    video, parameters, status = client.predict(
        prompt="a kite", init_image=None, steps=2, seed=3, frames=4, fps=4, video_format="mp4", api_name="/video"
    )
    assert status == "Done: 4 frames, seed 3."
    assert "Seed: 3" in parameters and "tiny-motion" in parameters
    frames = iio.imread(video)
    assert frames.shape[0] == 4 and frames.shape[1:3] == (32, 32)
    assert studio.gallery.search("a kite", kind="video")[0].path.endswith(".mp4")


def test_controlnet_tab_generates_with_a_canny_unit(app, controlnet_store, tmp_path):
    import json

    from gradio_client import handle_file

    from huabu.core.pnginfo import _PARAM_RE

    _, _, _, client = app
    reference = tmp_path / "reference.png"
    image = Image.new("RGB", (32, 32), (240, 240, 240))
    image.paste((20, 20, 20), (8, 8, 24, 24))
    image.save(reference)
    images, parameters, status = client.predict(prompt="a box", steps=2, seed=11, reference=handle_file(str(reference)),
                                                module="canny", controlnet_model="", resolution=64,
                                                api_name="/controlnet")
    assert status == "Done: 1 image(s), first seed 11."
    unit = json.loads(dict(_PARAM_RE.findall(parameters.split("\n")[-1]))["ControlNet 0"])
    assert unit.startswith("Module: canny, Model: tiny-canny [") and "Processor Res: 64" in unit
    assert "Threshold A: 100" in unit and "Threshold B: 200" in unit


def test_img2img_and_inpaint_take_uploaded_images_and_painted_masks(app, tmp_path):
    import numpy as np
    from gradio_client import handle_file

    _, _, _, client = app
    source = tmp_path / "source.png"
    Image.new("RGB", (40, 32), (30, 140, 200)).save(source)
    images, parameters, _ = client.predict(prompt="a lake", steps=4, seed=2, init_image=handle_file(str(source)),
                                           denoising_strength=0.5, api_name="/img2img")
    assert "Denoising strength: 0.5" in parameters and "Size: 40x32" in parameters
    layer = tmp_path / "layer.png"
    paint = Image.new("RGBA", (40, 32), (0, 0, 0, 0))
    paint.paste((255, 255, 255, 255), (0, 0, 20, 32))  # the left half is repainted
    paint.save(layer)
    editor = {"background": handle_file(str(source)), "layers": [handle_file(str(layer))],
              "composite": handle_file(str(source))}
    images, parameters, _ = client.predict(prompt="a boat", steps=4, seed=2, editor=editor, mask_blur=0,
                                           denoising_strength=1.0, api_name="/inpaint")
    assert "Mask blur: 0" in parameters
    with Image.open(images[0]["image"]) as result:
        pixels = np.asarray(result.convert("RGB"), dtype=int)
    assert (pixels[:, 24:] == (30, 140, 200)).all()  # unpainted: the original, pasted back
    assert np.abs(pixels[:, :16] - (30, 140, 200)).max() > 20  # painted: new content


@pytest.mark.parametrize("module, words", [
    ("softedge_hed", "softedge_hed needs HED weights: put ControlNetHED.safetensors in "),
    ("depth", "depth needs a depth model: put a transformers depth model folder"),
    ("pose", "pose needs OpenPose body weights: put body_pose_model.safetensors in "),
])
def test_controlnet_preview_errors_are_one_readable_line(app, tmp_path, module, words):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    studio, _, _, client = app
    reference = tmp_path / "reference.png"
    Image.new("RGB", (32, 32), (200, 200, 200)).save(reference)
    with pytest.raises(AppError) as err:
        client.predict(reference=handle_file(str(reference)), module=module, api_name="/controlnet_preview")
    text = str(err.value)
    assert text.startswith(words) and text.endswith(", or upload a ready map with module none") and "\n" not in text
    assert text != studio.texts["en"]["error.generic"]


def test_script_dropdown_runs_an_xyz_plot(app):
    from huabu.core.pnginfo import parse_infotext, read_parameters

    _, _, _, client = app
    images, parameters, _ = client.predict(prompt="a red fox", steps=2, seed=5, script="x/y/z plot", x_type="Steps",
                                           x_values="2, 3", y_type="CFG Scale", y_values="3, 7", api_name="/txt2img")
    assert len(images) == 5  # the grid, then the four cells
    with Image.open(images[0]["image"]) as grid:
        assert grid.width > 64 and grid.height > 64
        params = parse_infotext(read_parameters(grid))
    assert (params["Script"], params["X Type"], params["Y Values"]) == ("X/Y/Z plot", "Steps", "3, 7")
    assert parse_infotext(parameters)["Script"] == "X/Y/Z plot"


def test_tools_tab_merges_and_trains_an_embedding(app, model_store, tmp_path):
    from gradio_client import handle_file
    from safetensors import safe_open

    studio, _, _, client = app
    folder = str(model_store["folder"])
    status = client.predict(a=folder, b=folder, c=None, method="weighted-sum", alpha=0.4, name="self-merge",
                            fp16=True, api_name="/merge")
    merged = studio.settings.models_dir / "self-merge.safetensors"
    assert str(merged) in status and merged.is_file()
    with safe_open(merged, framework="pt") as f:
        assert '"multiplier": 0.4' in f.metadata()["sd_merge_recipe"]
    merged.unlink()  # the session's models folder is shared
    image = tmp_path / "zq.png"
    Image.new("RGB", (32, 32), (200, 40, 40)).save(image)
    status = client.predict(files=[handle_file(str(image))], archive=None, token="zqstudio", init_word="red",
                            vectors=1, steps=2, api_name="/train_embedding")
    trained = studio.settings.embeddings_dir / "zqstudio.safetensors"
    assert str(trained) in status
    with safe_open(trained, framework="pt") as f:
        assert f.get_tensor("emb_params").shape == (1, 32)


def test_img2img_batch_tab_runs_every_image_of_a_folder(app, tmp_path):
    import numpy as np

    from huabu.core.pnginfo import parse_infotext, read_parameters
    from huabu.core.requests import GenerateRequest

    studio, engine, _, client = app
    (tmp_path / "in").mkdir()
    for name, colour in (("a", (200, 30, 30)), ("b", (30, 30, 200))):
        Image.new("RGB", (32, 32), colour).save(tmp_path / "in" / f"{name}.png")
    images, parameters, _ = client.predict(prompt="a cat", steps=4, seed=9, denoising_strength=0.6, init_image=None,
                                           input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"),
                                           api_name="/img2img")
    saved = sorted((tmp_path / "out").glob("*.png"))
    assert len(images) == 2 and len(saved) == 2 and parse_infotext(parameters)["Seed"] == 9
    assert [parse_infotext(read_parameters(path))["Seed"] for path in saved] == [9, 10]
    direct = engine.generate(GenerateRequest.create(
        mode="img2img", prompt="a cat", steps=4, seed=10, denoising_strength=0.6, model=studio.default_model,
        sampler=studio.default_sampler, init_image=str(tmp_path / "in" / "b.png")))
    with Image.open(saved[1]) as made:
        difference = np.abs(np.asarray(made.convert("RGB"), dtype=int) - np.asarray(direct.images[0], dtype=int))
    assert difference.max() <= 1  # the second image of the folder, at its own seed
