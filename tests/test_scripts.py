"""A1111's scripts (huabu.engine.scripts): X/Y/Z plot, prompt matrix, prompts from file; grids checked cell by cell
against direct generations, A1111's grid infotext, Chinese labels, the CLI and A1111 API payloads per script."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from server_support import LOCAL, api_settings, decode_png, make_app

from huabu.cli.main import main
from huabu.core.errors import InvalidRequest
from huabu.core.pnginfo import parse_infotext, read_parameters
from huabu.core.requests import GenerateRequest
from huabu.engine.grids import Label, annotate_grid, image_grid

BASE = dict(prompt="a red apple", steps=2, width=32, height=32, seed=21, sampler="Euler")


def _request(model_store, script=None, **fields):
    return GenerateRequest.create(**{**BASE, "model": str(model_store["folder"]), **fields}, script=script)


def _px(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _direct(engine, model_store, **fields) -> np.ndarray:
    return _px(engine.generate(_request(model_store, **fields)).images[0])


def _cell(grid: Image.Image, col: int, row: int, ncols: int, nrows: int, size: int = 32) -> np.ndarray:
    """A cell of a labelled grid: the labels pad the top and the left; cells sit at the bottom right."""
    left, top = grid.width - ncols * size, grid.height - nrows * size
    return _px(grid.crop((left + col * size, top + row * size, left + (col + 1) * size, top + (row + 1) * size)))


def test_xyz_grid_cells_are_the_direct_generations(engine, model_store, tmp_path):
    plot = {"x_type": "Steps", "x_values": "2-3", "y_type": "CFG Scale", "y_values": "3, 7",
            "include_lone_images": True}
    result = engine.generate(_request(model_store, {"name": "X/Y/Z plot", "args": plot}), save=True, outdir=tmp_path)
    grid, cells = result.images[0], result.images[1:]
    assert len(cells) == 4 and grid.height > 64 and grid.width > 64  # two rows, two columns, and labels
    expected = [(2, 3.0), (3, 3.0), (2, 7.0), (3, 7.0)]  # x fastest, as A1111 lists them
    for index, (steps, cfg) in enumerate(expected):
        direct = _direct(engine, model_store, steps=steps, cfg_scale=cfg)
        assert np.array_equal(_px(cells[index]), direct)
        assert np.array_equal(_cell(grid, index % 2, index // 2, 2, 2), direct)
        assert parse_infotext(result.infotexts[index + 1])["Steps"] == steps
    params = parse_infotext(result.infotexts[0])
    assert (params["Script"], params["X Type"], params["X Values"], params["Y Type"], params["Y Values"]) == \
        ("X/Y/Z plot", "Steps", "2-3", "CFG Scale", "3, 7")
    assert params["Steps"] == 2 and params["Seed"] == 21  # the first cell's own fields
    saved = sorted(path.name for path in tmp_path.iterdir() if path.suffix == ".png")
    assert "xyz_grid-0000.png" in saved and len(saved) == 5
    assert read_parameters(tmp_path / "xyz_grid-0000.png") == result.infotexts[0]


def test_xyz_prompt_sr_checkpoint_seed_and_z_axes(engine, model_store):
    plot = {"x_type": "Prompt S/R", "x_values": "red, blue", "y_type": "Seed", "y_values": "-1, 5",
            "z_type": "Checkpoint name", "z_values": f"{model_store['folder']}, {model_store['single']}",
            "include_lone_images": True, "draw_legend": False}
    result = engine.generate(_request(model_store, {"name": "x/y/z plot", "args": plot},
                                      checkpoint_config=str(model_store["folder"])))
    params = parse_infotext(result.infotexts[0])
    fixed = [int(v) for v in params["Fixed Y Values"].split(", ")]
    assert fixed[1] == 5 and fixed[0] != -1 and params["Z Type"] == "Checkpoint name"
    assert len(result.images) == 9 and result.images[0].size == (2 * 2 * 32, 2 * 32)  # no legend: cells only
    blue = _direct(engine, model_store, prompt="a blue apple", seed=5)
    assert np.array_equal(_px(result.images[4]), blue)  # x=blue, y=5, z=folder
    assert np.array_equal(_px(result.images[8]), blue)  # the same weights as a single file


def test_xyz_refuses_what_it_cannot_do_before_generating(engine, model_store):
    bad = [({"x_type": "Eta", "x_values": "0, 1"}, "axis 'Eta' is not supported; use one of: Nothing, Seed"),
           ({"x_type": "Prompt S/R", "x_values": "green, blue"}, "Prompt S/R did not find 'green'"),
           ({"x_type": "Steps", "x_values": "2, many"}, "Steps value 'many' is not a whole number"),
           ({"x_type": "Steps", "x_values": "1-400", "y_type": "Seed", "y_values": "1, 2"}, "800 cells; at most 400"),
           ({"x_type": "Steps", "x_values": "0, 2"}, "steps must be between 1 and 150")]
    for plot, message in bad:
        with pytest.raises(InvalidRequest, match=message):
            engine.generate(_request(model_store, {"name": "x/y/z plot", "args": plot}))


def test_grid_labels_draw_chinese_text():
    cells = image_grid([Image.new("RGB", (64, 64), "grey")] * 2, rows=1)
    cat = np.asarray(annotate_grid(cells, 64, 64, [[Label("猫")], [Label("狗")]], [[Label("")]]).convert("L"))
    top = cat[: cat.shape[0] - 64]
    assert (top[:, :64] < 128).sum() > 10 and (top[:, 64:] < 128).sum() > 10  # ink above each column
    assert not np.array_equal(top[:, :64], top[:, 64:])  # two glyphs, not two "missing glyph" boxes


def test_prompt_matrix_makes_every_combination(engine, model_store):
    result = engine.generate(_request(model_store, {"name": "Prompt matrix", "args": [False, False, "positive",
                                                                                     "comma", 0]},
                                      prompt="a cat|red|hat"))
    prompts = [parse_infotext(text)["Prompt"] for text in result.infotexts[1:]]
    assert prompts == ["a cat", "a cat, red", "a cat, hat", "a cat, red, hat"]
    assert result.seeds[1:] == [21] * 4
    grid = result.images[0]
    for index in range(4):
        assert np.array_equal(_cell(grid, index % 2, index // 2, 2, 2), _px(result.images[index + 1]))
    assert np.array_equal(_px(result.images[4]), _direct(engine, model_store, prompt="a cat, red, hat"))


def test_prompts_from_file_lines_and_options(engine, model_store):
    text = '--prompt "a blue cat" --steps 3 --seed 7 --negative_prompt "blurry"\n\nan ox\n'
    result = engine.generate(_request(model_store, {"name": "prompts from file or textbox",
                                                    "args": [True, False, "start", text]}, prompt=""))
    assert len(result.images) == 2 and result.seeds == [7, 22]  # line 2 keeps the request's seed, moved on by one
    assert np.array_equal(_px(result.images[0]), _direct(engine, model_store, prompt="a blue cat", steps=3, seed=7,
                                                         negative_prompt="blurry"))
    assert parse_infotext(result.infotexts[1])["Prompt"] == "an ox"
    with pytest.raises(InvalidRequest, match="option --subseed is not supported"):
        engine.generate(_request(model_store, {"name": "prompts from file or textbox",
                                               "args": {"text": "--prompt x --subseed 3"}}))


def test_cli_xyz_and_from_file(huabu_env, model_store, tmp_path, capsys):
    out = tmp_path / "xyz"
    common = ["--model", "tiny-sd", "--steps", "2", "--size", "32", "--seed", "3", "--sampler", "Euler", "-o"]
    assert main(["xyz", "一只猫", "--x", "Steps: 2, 3", "--y", "CFG Scale: 3, 7", *common, str(out)]) == 0
    grid = out / "xyz_grid-0000.png"
    assert parse_infotext(Image.open(grid).info["parameters"])["Y Values"] == "3, 7"
    assert len(list(out.glob("*.png"))) == 5
    assert main(["xyz", "a cat", "--x", "Seed: 1, 2", "--no-grid", *common, str(tmp_path / "nogrid")]) == 0
    assert sorted(p.name.startswith("xyz_grid") for p in (tmp_path / "nogrid").glob("*.png")) == [False, False]
    lines = tmp_path / "prompts.txt"
    lines.write_text("a red cat\n--prompt \"a dog\" --steps 3\n", encoding="utf-8")
    assert main(["generate", "--from-file", str(lines), *common, str(tmp_path / "lines")]) == 0
    made = [parse_infotext(Image.open(p).info["parameters"]) for p in sorted((tmp_path / "lines").glob("*.png"))]
    assert [(p["Prompt"], p["Steps"]) for p in made] == [("a red cat", 2), ("a dog", 3)]
    assert main(["xyz", "a cat", "--x", "Hires steps: 2, 3", "--hires", "2", "--denoise", "0.6", "--no-grid", *common,
                 str(tmp_path / "hires")]) == 0
    made = [Image.open(p) for p in sorted((tmp_path / "hires").glob("*.png"))]
    assert [(parse_infotext(p.info["parameters"])["Hires steps"], p.size) for p in made] == [(2, (64, 64)),
                                                                                             (3, (64, 64))]
    assert main(["xyz", "a cat", "--x", "Steps 2", *common, str(out)]) == 2
    assert 'must look like "TYPE: values"' in capsys.readouterr().err


@pytest.fixture
def client(engine, model_store, tmp_path):
    with TestClient(make_app(api_settings(model_store, tmp_path / "home"), engine), base_url=LOCAL) as test_client:
        yield test_client


def test_a1111_script_payloads(client, engine, model_store):
    titles = client.get("/sdapi/v1/scripts").json()
    assert "x/y/z plot" in titles["txt2img"] and "prompt matrix" in titles["img2img"]
    base = {"prompt": "a red apple", "steps": 2, "width": 32, "height": 32, "seed": 21, "sampler_name": "Euler"}
    # A1111's positional args: txt2img axis 4 = Steps, 6 = CFG Scale; legend, lone images
    xyz = [4, "2, 3", [], 6, "3, 7", [], 0, "", [], True, True, False, False, 0, False, False]
    body = client.post("/sdapi/v1/txt2img", json={**base, "script_name": "x/y/z plot", "script_args": xyz}).json()
    images = [decode_png(text) for text in body["images"]]
    assert len(images) == 5 and images[0].width > 64 and images[1].size == (32, 32)  # the grid first
    assert parse_infotext(images[0].info["parameters"])["X Type"] == "Steps"
    direct = engine.generate(GenerateRequest.create(**{**BASE, "model": "tiny-sd", "steps": 3, "cfg_scale": 7}))
    assert np.array_equal(_px(images[4]), _px(direct.images[0]))
    assert "script_name" not in " ".join(json.loads(body["info"])["warnings"])

    matrix = client.post("/sdapi/v1/txt2img", json={**base, "prompt": "a cat|red", "script_name": "prompt matrix",
                                                     "script_args": [False, False, "positive", "comma", 0]}).json()
    assert len(matrix["images"]) == 3
    lines = client.post("/sdapi/v1/txt2img", json={**base, "prompt": "", "script_name": "prompts from file or textbox",
                                                    "script_args": [False, False, "start", "a cat\na dog"]}).json()
    assert [parse_infotext(t)["Prompt"] for t in json.loads(lines["info"])["infotexts"]] == ["a cat", "a dog"]

    path_axis = [11, str(model_store["single"]), [], 0, "", [], 0, "", [], True, False, False, False, 0, True, False]
    refused = client.post("/sdapi/v1/txt2img", json={**base, "script_name": "x/y/z plot", "script_args": path_axis})
    assert refused.status_code in (400, 403, 404, 422) and "no model" in refused.text
    unknown = client.post("/sdapi/v1/txt2img", json={**base, "script_name": "loopback", "script_args": []})
    assert unknown.status_code in (400, 422) and "script 'loopback' is not one huabu runs" in unknown.text


def _write_inputs(folder, colours):
    folder.mkdir()
    for name, colour in colours.items():
        Image.new("RGB", (32, 32), colour).save(folder / f"{name}.png")


def test_cli_batch_img2img_from_a_folder_and_batch_grids(huabu_env, engine, model_store, tmp_path):
    _write_inputs(tmp_path / "in", {"a": (200, 30, 30), "b": (30, 30, 200)})
    (tmp_path / "masks").mkdir()
    for name in "ab":
        mask = Image.new("L", (32, 32), 0)
        mask.paste(255, (8, 8, 24, 24))
        mask.save(tmp_path / "masks" / f"{name}.png")
    common = ["--model", "tiny-sd", "--steps", "4", "--seed", "9", "--sampler", "Euler", "--strength", "0.6"]
    assert main(["img2img", "a cat", "--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out"),
                 "--batch", "2", "--grid", *common]) == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["a-1.png", "a.png", "b-1.png", "b.png", "grid-0000.png"]
    direct = engine.generate(GenerateRequest.create(mode="img2img", prompt="a cat", model="tiny-sd", steps=4,
                                                    seed=11, sampler="Euler", denoising_strength=0.6,
                                                    init_image=str(tmp_path / "in" / "b.png")))
    assert np.abs(_px(Image.open(out / "b.png")) - _px(direct.images[0])).max() <= 1  # batch vs single rounding
    assert parse_infotext(Image.open(out / "b-1.png").info["parameters"])["Seed"] == 12
    grid = Image.open(out / "grid-0000.png")
    assert grid.size == (64, 64) and np.array_equal(_px(grid.crop((32, 0, 64, 32))), _px(Image.open(out / "a-1.png")))
    assert main(["img2img", "a cat", "--input-dir", str(tmp_path / "in"), "--mask-dir", str(tmp_path / "masks"),
                 "--output-dir", str(tmp_path / "inpainted"), *common]) == 0
    kept = _px(Image.open(tmp_path / "inpainted" / "a.png"))
    assert "Mask blur" in Image.open(tmp_path / "inpainted" / "a.png").info["parameters"]
    assert np.abs(kept[0, 0] - np.array([200, 30, 30])).max() <= 3  # outside the mask: the input, pasted back


def test_a1111_img2img_uses_every_init_image(client, engine, tmp_path):
    import base64
    import io

    encoded = []
    for colour in ((200, 30, 30), (30, 30, 200)):
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode())
    payload = {"prompt": "a cat", "init_images": encoded, "steps": 4, "seed": 9, "sampler_name": "Euler",
               "denoising_strength": 0.6, "width": 32, "height": 32}
    body = client.post("/sdapi/v1/img2img", json=payload).json()
    images = [decode_png(text) for text in body["images"]]
    assert len(images) == 2 and json.loads(body["info"])["all_seeds"] == [9, 10]
    Image.open(io.BytesIO(base64.b64decode(encoded[1]))).save(tmp_path / "blue.png")
    direct = engine.generate(GenerateRequest.create(mode="img2img", prompt="a cat", model="tiny-sd", steps=4,
                                                    seed=10, sampler="Euler", denoising_strength=0.6, width=32,
                                                    height=32, init_image=str(tmp_path / "blue.png")))
    assert np.array_equal(_px(images[1]), _px(direct.images[0]))


def test_xyz_varies_a_lora_weight_through_prompt_sr(engine, model_store, settings):
    from safetensors.torch import save_file
    from test_lora_inference import _kohya_state

    pipe = engine.models.load(str(model_store["folder"])).pipeline
    settings.loras_dir.mkdir(parents=True, exist_ok=True)
    save_file(_kohya_state(pipe, 5), settings.loras_dir / "xyz-ink.safetensors")
    plot = {"x_type": "Prompt S/R", "x_values": "0.2, 1", "include_lone_images": True}
    result = engine.generate(_request(model_store, {"name": "x/y/z plot", "args": plot},
                                      prompt="a cat <lora:xyz-ink:0.2>"))
    for cell, weight in zip(result.images[1:], (0.2, 1)):
        assert np.array_equal(_px(cell), _direct(engine, model_store, prompt=f"a cat <lora:xyz-ink:{weight}>"))
    assert not np.array_equal(_px(result.images[1]), _px(result.images[2]))


def test_xyz_sampler_clip_skip_and_controlnet_weight_axes(engine, model_store, controlnet_store, tmp_path):
    from PIL import ImageDraw

    reference = Image.new("RGB", (32, 32), (30, 60, 200))
    ImageDraw.Draw(reference).rectangle((6, 6, 20, 26), fill=(240, 220, 20))
    reference.save(tmp_path / "ref.png")
    unit = {"module": "canny", "model": str(controlnet_store["canny"]), "image": str(tmp_path / "ref.png")}
    plot = {"x_type": "[ControlNet] Weight", "x_values": "0, 1.5", "y_type": "Sampler", "y_values": "Euler a",
            "z_type": "Clip skip", "z_values": "2", "include_lone_images": True}
    result = engine.generate(_request(model_store, {"name": "x/y/z plot", "args": plot}, controlnets=[unit]))
    full = _direct(engine, model_store, sampler="Euler a", clip_skip=2, controlnets=[{**unit, "weight": 1.5}])
    assert np.array_equal(_px(result.images[2]), full)
    assert not np.array_equal(_px(result.images[1]), full)


def _cells(result, count: int) -> list[np.ndarray]:
    return [_px(image) for image in result.images[1:1 + count]]


def test_xyz_variation_seed_axes_change_the_cells_and_their_infotexts(engine, model_store):
    plot = {"x_type": "Var. seed", "x_values": "-1, 4", "y_type": "Var. strength", "y_values": "0.3, 0.7",
            "include_lone_images": True}
    result = engine.generate(_request(model_store, {"name": "x/y/z plot", "args": plot}))
    cells = _cells(result, 4)
    params = [parse_infotext(text) for text in result.infotexts[1:5]]
    fixed = [int(v) for v in parse_infotext(result.infotexts[0])["Fixed X Values"].split(", ")]
    assert fixed[0] != -1 and fixed[1] == 4  # -1 picked once, before the first cell, as for Seed
    assert [(p["Variation seed"], p["Variation seed strength"]) for p in params] == \
        [(fixed[0], 0.3), (4, 0.3), (fixed[0], 0.7), (4, 0.7)]
    assert all(not np.array_equal(cells[i], cells[j]) for i in range(4) for j in range(i + 1, 4))
    assert np.array_equal(cells[1], _direct(engine, model_store, subseed=4, subseed_strength=0.3))
    # A1111's positional index of the txt2img list: 2 = Var. seed, 3 = Var. strength
    positional = [2, "5, 6", [], 3, "0.5", [], 0, "", [], False, True, False, False, 0, False, False]
    again = engine.generate(_request(model_store, {"name": "x/y/z plot", "args": positional}))
    assert [parse_infotext(text)["Variation seed"] for text in again.infotexts[1:]] == [5, 6]


def test_xyz_hires_axes_change_the_cells_and_their_infotexts(engine, model_store):
    hires = dict(enable_hr=True, hr_scale=2.0, hr_second_pass_steps=2, denoising_strength=0.6)
    axes = [("Hires steps", "2, 4", "Hires steps", "hr_second_pass_steps", [2, 4]),
            ("Hires upscaler", "Latent, Lanczos", "Hires upscaler", "hr_upscaler", ["Latent", "Lanczos"]),
            ("Hires sampler", "Euler a, DPM++ 2M", "Hires sampler", "hr_sampler", ["Euler a", "DPM++ 2M"]),
            ("Denoising", "0.4, 0.8", "Denoising strength", "denoising_strength", [0.4, 0.8])]
    for label, values, key, field, expected in axes:
        plot = {"x_type": label, "x_values": values, "include_lone_images": True}
        result = engine.generate(_request(model_store, {"name": "x/y/z plot", "args": plot}, **hires))
        first, second = _cells(result, 2)
        assert first.shape == (64, 64, 3) and not np.array_equal(first, second), label
        assert [parse_infotext(text)[key] for text in result.infotexts[1:3]] == expected, label
        assert parse_infotext(result.infotexts[0])["X Type"] == label
        assert np.array_equal(second, _direct(engine, model_store, **{**hires, field: expected[1]})), label


def test_studio_script_dropdown_offers_every_engine_axis():
    from huabu.engine.scripts.xyz import AXES
    from huabu.ui.scripts import AXIS_LABELS

    assert list(AXIS_LABELS) == [axis.label for axis in AXES.values()]
    assert {"Var. seed", "Var. strength", "Hires steps", "Hires upscaler", "Hires sampler"} <= set(AXIS_LABELS)


def test_a1111_batch_grid_on_a_full_disk_is_one_line(client, monkeypatch):
    import errno

    from huabu.server import a1111

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(a1111, "save_grid", full)
    body = {"prompt": "a red apple", "steps": 2, "width": 32, "height": 32, "batch_size": 2, "save_images": True}
    answer = client.post("/sdapi/v1/txt2img", json=body)
    assert answer.status_code == 507
    assert answer.json()["detail"] == "the disk is full: the batch grid could not be saved"


def test_a1111_batch_answers_its_grid_first_as_a1111(client):
    base = {"prompt": "a red apple", "steps": 2, "width": 32, "height": 32, "seed": 21, "sampler_name": "Euler",
            "batch_size": 2, "n_iter": 2, "save_images": True}
    outputs = client.app.state.huabu.settings.outputs_dir
    body = client.post("/sdapi/v1/txt2img", json=base).json()
    images, info = [decode_png(text) for text in body["images"]], json.loads(body["info"])
    assert len(images) == 5 and images[0].size == (64, 64)  # round(sqrt(4)) = 2 rows, unlabelled
    for index, cell in enumerate(images[1:]):
        left, top = index % 2 * 32, index // 2 * 32
        assert np.array_equal(_px(images[0].crop((left, top, left + 32, top + 32))), _px(cell))
    assert info["index_of_first_image"] == 1 and len(info["infotexts"]) == 5 and info["all_seeds"] == [21, 22, 23, 24]
    assert read_parameters(images[0]) == info["infotexts"][0] == info["infotexts"][1]
    saved = outputs / "jobs" / info["job_id"] / "grid-0000.png"
    assert read_parameters(saved) == info["infotexts"][0]  # grid_save (A1111's default: on)

    unsaved = json.loads(client.post("/sdapi/v1/txt2img", json={**base, "save_images": False}).json()["info"])
    assert len(unsaved["infotexts"]) == 4 and unsaved["index_of_first_image"] == 0  # do_not_save_grid, as A1111
    single = client.post("/sdapi/v1/txt2img", json={**base, "batch_size": 1, "n_iter": 1}).json()
    assert len(single["images"]) == 1  # grid_only_if_multiple

    assert client.post("/sdapi/v1/options", json={"return_grid": False}).status_code == 200
    kept = client.post("/sdapi/v1/txt2img", json=base).json()
    job = json.loads(kept["info"])["job_id"]
    assert len(kept["images"]) == 4 and (outputs / "jobs" / job / "grid-0000.png").is_file()
    assert client.post("/sdapi/v1/options", json={"return_grid": True, "grid_save": False}).status_code == 200
    returned = client.post("/sdapi/v1/txt2img", json=base).json()
    job = json.loads(returned["info"])["job_id"]
    assert len(returned["images"]) == 5 and not (outputs / "jobs" / job / "grid-0000.png").exists()
