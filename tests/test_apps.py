"""The course's applications (huabu.core.apps, huabu.engine.apps, huabu.training.portrait) on the session's tiny
models with a random tiny IP-Adapter: what each app keeps is the input's pixels, what it repaints changes, every
output names its app in its infotext (read back from the PNG), `reproduce` remakes it from the same inputs, and the
CLI, the native API and the studio tab run them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from test_ip_adapter import build_tiny_image_encoder, build_tiny_ip_adapter

from huabu.core.apps import AppRequest
from huabu.core.errors import InvalidRequest, ModelNotFound
from huabu.core.pnginfo import parse_infotext, read_parameters
from huabu.engine.apps import run_app
from huabu.engine.apps.common import erode, pixel_hash
from huabu.engine.apps.replace import replace_plan
from huabu.engine.apps.segment import subject_mask

FAST = dict(steps=3, cfg_scale=5.0, seed=11, model="tiny-sd")
BACKGROUND, SUBJECT = (40, 85, 215), (240, 215, 50)


def diff(a, b) -> np.ndarray:
    return np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max(axis=-1)


@pytest.fixture(scope="module")
def app_home(model_store, controlnet_store, tmp_path_factory) -> Path:
    """A home whose IP-Adapter folder holds one random tiny adapter (and its image encoder) and whose ControlNet
    folder is the session's (tiny-canny among them)."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    home = tmp_path_factory.mktemp("apps-home")
    unet = UNet2DConditionModel.from_pretrained(model_store["folder"] / "unet")
    (home / "ip-adapter").mkdir()
    build_tiny_image_encoder().save_pretrained(home / "ip-adapter" / "image_encoder")
    save_file(build_tiny_ip_adapter(unet, 7), home / "ip-adapter" / "ip-adapter_tiny.safetensors")
    return home


@pytest.fixture(scope="module")
def apps_engine(engine, model_store, app_home):
    from huabu.core.settings import Settings
    from huabu.engine.generate import Engine

    settings = Settings.for_home(app_home, models_dir=model_store["home"] / "models",
                                 controlnet_dir=model_store["home"] / "controlnet", device="cpu", dtype="fp32",
                                 hub_offline=True)
    return Engine(settings, models=engine.models)  # the session's loaded tiny models


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> dict[str, Path]:
    """A 50x42 picture (not a multiple of 8: apps crop it to 48x40) of a yellow disc on blue, an item picture and a
    second item, and a mask of the disc."""
    folder = tmp_path_factory.mktemp("apps-scene")
    image = Image.new("RGB", (50, 42), BACKGROUND)
    ImageDraw.Draw(image).ellipse((12, 8, 34, 30), fill=SUBJECT)
    image.save(folder / "scene.png")
    mask = Image.new("L", (50, 42), 0)
    ImageDraw.Draw(mask).ellipse((12, 8, 34, 30), fill=255)
    mask.save(folder / "disc.png")
    for name, colour in (("item", (200, 30, 30)), ("item2", (20, 200, 90))):
        item = Image.new("RGB", (32, 32), (245, 245, 245))
        ImageDraw.Draw(item).rectangle((6, 6, 26, 26), fill=colour)
        item.save(folder / f"{name}.png")
    return {"image": folder / "scene.png", "mask": folder / "disc.png", "item": folder / "item.png",
            "item2": folder / "item2.png"}


def app(**fields) -> AppRequest:
    return AppRequest.create(**{**FAST, **fields})


def test_grabcut_finds_the_subject_from_a_point_or_a_box_and_the_same_each_time(scene):
    image = Image.open(scene["image"]).convert("RGB")
    truth = np.asarray(Image.open(scene["mask"])) > 127
    for found in (subject_mask(image, point=[23, 19]), subject_mask(image, box=[8, 4, 40, 34])):
        iou = (found & truth).sum() / (found | truth).sum()
        assert iou > 0.9
    assert np.array_equal(subject_mask(image, point=[23, 19]), subject_mask(image, point=[23, 19]))
    with pytest.raises(InvalidRequest, match="outside the 50x42 image"):
        subject_mask(image, point=[60, 5])


def test_replace_keeps_the_subject_exactly_and_repaints_the_rest(apps_engine, scene, tmp_path):
    request = app(app="replace", image=str(scene["image"]), point="23,19", prompt="a red background")
    result = run_app(apps_engine, request, save=True, outdir=tmp_path)
    out = result.images[0]
    assert out.size == (48, 40)  # cropped to whole latent pixels, never resized
    source = Image.open(scene["image"]).convert("RGB").crop((0, 0, 48, 40))
    _, _, kept = replace_plan(request, None)
    change = diff(out, source)
    assert change[erode(kept, 2)].max() <= 2 and change[~kept].mean() > 20
    params = parse_infotext(read_parameters(result.paths[0]))
    assert params["App"] == "replace" and params["App keep"] == "subject" and params["App point"] == "23,19"
    assert params["App image"] == pixel_hash(Image.open(scene["image"])) and params["App segmenter"] == "grabcut"
    assert params["Mask blur"] == 0
    # keep the background instead, the subject from a mask or a box
    for fields in ({"mask": str(scene["mask"])}, {"box": "8,4,40,34"}):
        other = app(app="replace", image=str(scene["image"]), keep="background", prompt="a green square", **fields)
        _, _, kept = replace_plan(other, None)
        change = diff(run_app(apps_engine, other).images[0], source)
        assert change[erode(kept, 2)].max() <= 2 and change[~kept].mean() > 20


def test_try_on_changes_only_the_region_and_follows_the_item(apps_engine, scene, tmp_path):
    source = Image.open(scene["image"]).convert("RGB").crop((0, 0, 48, 40))
    results = []
    for item in ("item", "item2"):
        request = app(app="try-on", image=str(scene["image"]), box="10,6,36,32", reference=str(scene[item]),
                      ip_adapter_weight=1.0)
        results.append(run_app(apps_engine, request, save=True, outdir=tmp_path))
    region = np.zeros((40, 48), bool)
    region[6:32, 10:36] = True
    first, second = (result.images[0] for result in results)
    assert diff(first, source)[~region].max() <= 2 and diff(first, source)[region].mean() > 10
    assert diff(first, second)[region].max() > 10  # the item steers the region
    params = parse_infotext(read_parameters(results[0].paths[0]))
    assert params["App"] == "try-on" and params["App reference"] == pixel_hash(Image.open(scene["item"]))
    assert params["ControlNet 0"].startswith("Module: ip-adapter_clip_sd15, Model: ip-adapter_tiny [")
    with_shape = app(app="try-on", image=str(scene["image"]), mask=str(scene["mask"]), reference=str(scene["item"]),
                     controlnet="tiny-canny")
    shaped = run_app(apps_engine, with_shape)
    assert "App control: canny" in shaped.infotexts[0] and "Module: canny" in shaped.infotexts[0]
    outside = np.asarray(Image.open(scene["mask"]).crop((0, 0, 48, 40))) <= 127
    assert diff(shaped.images[0], source)[outside].max() <= 2


def test_instant_id_uses_the_reference_and_a_layout_controlnet_when_installed(apps_engine, app_home, scene,
                                                                             caplog):
    plain = apps_engine.generate(_txt2img()).images[0]
    auto = run_app(apps_engine, app(app="instant-id", reference=str(scene["item"]), prompt="a toy", width=32,
                                    height=32))
    params = parse_infotext(auto.infotexts[0])
    assert params["App"] == "instant-id" and params["App control"] == "canny"
    units = [value for key, value in params.items() if key.startswith("ControlNet ")]
    assert any(unit.startswith("Module: canny") for unit in units) and any("ip-adapter" in unit for unit in units)
    off = run_app(apps_engine, app(app="instant-id", reference=str(scene["item"]), prompt="a toy", width=32,
                                   height=32, controlnet="none"))
    assert parse_infotext(off.infotexts[0])["App control"] == "none" and diff(off.images[0], plain).max() > 3
    # FaceID weights need insightface: set aside with a warning, the CLIP adapter used
    face = app_home / "ip-adapter" / "ip-adapter-faceid_tiny.safetensors"
    face.write_bytes((app_home / "ip-adapter" / "ip-adapter_tiny.safetensors").read_bytes())
    try:
        again = run_app(apps_engine, app(app="instant-id", reference=str(scene["item"]), prompt="a toy", width=32,
                                         height=32, controlnet="none"))
    finally:
        face.unlink()
    assert "insightface" in caplog.text and diff(again.images[0], off.images[0]).max() == 0


def _txt2img():
    from huabu.core.requests import GenerateRequest

    return GenerateRequest.create(prompt="a toy", width=32, height=32, **FAST)


def test_requests_refuse_what_an_app_cannot_use_in_one_line():
    cases = [({"app": "replace", "image": "a.png"}, "exactly one of point"),
             ({"app": "replace", "image": "a.png", "point": "1,2", "box": "0,0,4,4"}, "exactly one of point"),
             ({"app": "replace", "image": "a.png", "point": "1,2,3"}, "point must be X,Y"),
             ({"app": "replace", "image": "a.png", "box": "5,5,2,9"}, "X0 < X1"),
             ({"app": "try-on", "image": "a.png", "box": "0,0,4,4"}, "reference image"),
             ({"app": "portrait", "photos": "p"}, "--name"),
             ({"app": "portrait", "photos": "p", "name": "two words"}, "letters, digits"),
             ({"app": "paint"}, "app must be")]
    for fields, words in cases:
        with pytest.raises(InvalidRequest) as info:
            AppRequest.create(**fields)
        assert words in str(info.value) and "\n" not in str(info.value)


def test_cli_replace_png_info_reproduce_and_errors(huabu_env, scene, capsys, tmp_path):
    from huabu.cli.main import main

    out = tmp_path / "out"
    assert main(["apps", "replace", "a red background", "--image", str(scene["image"]), "--point", "23,19",
                 "--steps", "3", "--seed", "4", "--model", "tiny-sd", "-o", str(out)]) == 0, capsys.readouterr().err
    made = out / "00000-4.png"
    assert f"{made}  (seed 4)" in capsys.readouterr().out
    assert main(["png-info", str(made), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["App"] == "replace"
    assert main(["reproduce", str(made), "--image", str(scene["image"])]) == 0
    assert capsys.readouterr().out.strip() == "match"
    assert main(["reproduce", str(made)]) == 2
    assert "pass it with --image" in capsys.readouterr().err
    assert main(["reproduce", str(made), "--image", str(scene["item"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not the image this output was made from" in err
    image, fast = str(scene["image"]), ["--steps", "2", "--model", "tiny-sd"]
    for argv, words in (
            (["replace", "x", "--image", str(tmp_path / "none.png"), "--point", "1,1"], "none.png"),
            (["replace", "x", "--image", image, "--point", "1;1"], "point must be X,Y"),
            (["replace", "x", "--image", image, "--point", "2,2", "--sam", "nosam"], "SAM model 'nosam' not found"),
            (["try-on", "--image", image, "--reference", str(scene["item"]), "--box", "0,0,9,9"], "no IP-Adapter in")):
        assert main(["apps", *argv, *fast]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and words in err, err


def test_reproduce_remakes_try_on_and_instant_id(huabu_env, model_store, controlnet_store, app_home, scene, capsys,
                                                 tmp_path):
    from huabu.cli.main import main

    (huabu_env / "ip-adapter").symlink_to(app_home / "ip-adapter")
    out = tmp_path / "out"
    assert main(["apps", "try-on", "--image", str(scene["image"]), "--reference", str(scene["item"]), "--mask",
                 str(scene["mask"]), "--steps", "3", "--seed", "8", "--model", "tiny-sd", "-o", str(out)]) == 0
    made = out / "00000-8.png"
    capsys.readouterr()
    assert main(["reproduce", str(made), "--image", str(scene["image"]), "--mask", str(scene["mask"])]) == 2
    assert "--reference" in capsys.readouterr().err
    assert main(["reproduce", str(made), "--image", str(scene["image"]), "--mask", str(scene["mask"]),
                 "--reference", str(scene["item"])]) == 0
    assert capsys.readouterr().out.strip() == "match"
    # instant-id with the ControlNet it picked (the folder's tiny-canny), remade from the reference alone
    (huabu_env / "controlnet").symlink_to(model_store["home"] / "controlnet")
    assert main(["apps", "instant-id", "a toy", "--reference", str(scene["item"]), "--size", "32x32", "--steps", "3",
                 "--seed", "9", "--model", "tiny-sd", "-o", str(out)]) == 0
    made = out / "00001-9.png"
    assert "App control: canny" in read_parameters(made)
    capsys.readouterr()
    assert main(["reproduce", str(made), "--reference", str(scene["item"])]) == 0
    assert capsys.readouterr().out.strip() == "match"


def test_native_api_job_kinds(engine, model_store, app_home, scene, tmp_path):
    from fastapi.testclient import TestClient
    from server_support import LOCAL, api_settings, make_app, wait_for

    from huabu.engine.images import load_image

    def url(path: Path) -> str:
        return "data:image/png;base64," + __import__("base64").b64encode(path.read_bytes()).decode()

    settings = api_settings(model_store, tmp_path / "home", ip_adapter_dir=app_home / "ip-adapter")
    with TestClient(make_app(settings, engine), base_url=LOCAL) as client:
        replace = {"image": url(scene["image"]), "point": "23,19", "prompt": "red", "steps": 3, "seed": 5}
        try_on = {"image": url(scene["image"]), "box": "10,6,36,32", "reference": url(scene["item"]), "steps": 3}
        instant = {"reference": url(scene["item"]), "prompt": "a toy", "steps": 3, "width": 32, "height": 32,
                   "controlnet": "none"}
        for kind, request in (("replace", replace), ("try-on", try_on), ("instant-id", instant)):
            response = client.post("/api/v1/jobs", json={"kind": kind, "request": request})
            assert response.status_code == 202, response.text
            done = wait_for(client, response.json()["id"])
            assert done["state"] == "done", done["error"]
            assert done["kind"] == kind and done["request"]["app"] == kind
            served = client.get(done["result"]["images"][0])
            path = tmp_path / "p.png"
            path.write_bytes(served.content)
            assert parse_infotext(read_parameters(path))["App"] == kind
            if kind == "replace":
                source = load_image(str(scene["image"])).crop((0, 0, 48, 40))
                assert diff(load_image(str(path)), source)[14:24, 18:28].max() <= 2  # inside the disc
        refused = [({"kind": "replace", "request": {**replace, "image": str(scene["image"])}}, 403, "data:image"),
                   ({"kind": "replace", "request": {**replace, "sam": "../sam"}}, 403, "not a path"),
                   ({"kind": "replace", "request": {**replace, "app": "try-on"}}, 400, "differs from the job kind"),
                   ({"kind": "portrait", "request": {"photos": "/tmp", "name": "me"}}, 403, "huabu apps portrait"),
                   ({"kind": "try-on", "request": {"image": url(scene["image"])}}, 400, "exactly one of mask")]
        for body, status, words in refused:
            response = client.post("/api/v1/jobs", json=body)
            assert response.status_code == status and words in response.json()["detail"], response.text


def test_portrait_crops_trains_renders_a_contact_sheet_and_resumes(apps_engine, tmp_path):
    from huabu.engine.prompts.book import load_book
    from huabu.training.portrait import run_portrait

    style_names = list(load_book().styles)  # tiny-sd carries no prompt book of its own

    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(4):
        image = Image.new("RGB", (48, 48), [(214, 40, 40), (40, 85, 215)][index % 2])
        ImageDraw.Draw(image).polygon([(10 + index, 30), (24, 8 + index), (38 - index, 30)], fill=(240, 215, 50))
        image.save(photos / f"p{index}.png")
    request = AppRequest.create(app="portrait", photos=str(photos), name="zqxtri", count=2, train_steps=2, rank=2,
                                steps=2, seed=3, model="tiny-sd", width=32, height=32)
    stages = []
    result = run_portrait(request, apps_engine, lambda stage, done, total: stages.append(stage),
                          outdir=tmp_path / "out")
    assert sum(result.found.values()) == 4 and result.lora.is_file()
    assert {"crop", "train", "render"} <= set(stages)
    captions = sorted((apps_engine.settings.home / "portraits" / "zqxtri" / "data").glob("*.txt"))
    assert [path.read_text() for path in captions[:2]] == ["a zqxtri on a red background",
                                                           "a zqxtri on a blue background"]
    assert [path.name for path in result.renders] == [f"{i:02d}-{name}.png" for i, name in
                                                      enumerate(style_names[:2])]
    params = parse_infotext(read_parameters(result.renders[0]))
    assert params["App"] == "portrait" and params["App style"] == style_names[0] and "Lora hashes" in params
    sheet = Image.open(result.sheet)
    assert sheet.width == 2 * 32 and sheet.height > 32
    # resumed: the finished LoRA is not trained again and the renders are kept
    stamp = result.lora.stat().st_mtime_ns
    again = run_portrait(request.model_copy(update={"resume": True}), apps_engine, outdir=tmp_path / "out")
    assert again.lora.stat().st_mtime_ns == stamp and again.renders == result.renders
    with pytest.raises(InvalidRequest, match="unknown style 'nope'"):
        run_portrait(request.model_copy(update={"styles": ["nope"]}), apps_engine)


def build_tiny_sam(folder: Path) -> None:
    """A random transformers SamModel (64-pixel input, 16-wide) and its processor, saved as a SAM folder."""
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    torch.manual_seed(0)
    vision = dict(hidden_size=16, output_channels=16, num_hidden_layers=1, num_attention_heads=2, image_size=64,
                  patch_size=16, global_attn_indexes=[0], mlp_dim=32, window_size=2, num_pos_feats=8)
    prompt = dict(hidden_size=16, image_size=64, patch_size=16, mask_input_channels=4, num_point_embeddings=4)
    decoder = dict(hidden_size=16, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2, iou_head_hidden_dim=16)
    SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
             ).save_pretrained(folder)
    SamProcessor(SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
                                   mask_size={"longest_edge": 16}, mask_pad_size={"height": 16, "width": 16})
                 ).save_pretrained(folder)


def test_replace_with_sam_from_a_folder_in_the_sam_directory(apps_engine, scene):
    (apps_engine.settings.home / "sam" / "empty").mkdir(parents=True, exist_ok=True)
    build_tiny_sam(apps_engine.settings.home / "sam" / "tiny-sam")
    request = app(app="replace", image=str(scene["image"]), point="23,19", sam="tiny-sam", prompt="red")
    _, _, kept = replace_plan(request, apps_engine.settings.home / "sam" / "tiny-sam")
    assert kept.shape == (40, 48) and 0 < kept.sum() < kept.size  # SAM's (random) mask, the part nearest the click
    result = run_app(apps_engine, request)
    source = Image.open(scene["image"]).convert("RGB").crop((0, 0, 48, 40))
    assert diff(result.images[0], source)[kept].max() <= 2  # a thin random mask: every kept pixel, not eroded
    assert parse_infotext(result.infotexts[0])["App segmenter"] == "sam"
    with pytest.raises(ModelNotFound, match="no SAM model in"):
        run_app(apps_engine, request.model_copy(update={"sam": "empty"}))


def test_studio_apps_tab_builds_runs_and_previews(apps_engine, scene, tmp_path):
    from huabu.ui.app import Studio
    from huabu.ui.tabs.apps import app_request, finish, kept_preview

    studio = Studio(apps_engine.settings, "en", engine=apps_engine)
    studio.build()
    request = app_request("replace", "red", "", 3, 5.0, 2, {"model": "tiny-sd"}, image=str(scene["image"]),
                          point="23,19", keep="subject")
    preview = np.asarray(kept_preview(request, studio))
    assert preview.shape == (40, 48, 3) and tuple(preview[19, 23]) == SUBJECT and tuple(preview[2, 2]) != BACKGROUND
    prefs = {"model": "tiny-sd", "outputs_dir": str(tmp_path)}
    result = studio.run_app(request, "en", prefs, None, lambda *args, **kwargs: None)
    shown, infotext, status = finish(studio, result, studio.texts["en"])
    assert "App: replace" in infotext and status.startswith("Done") and Path(shown).is_file()


def test_a_model_folders_own_prompt_book_styles_its_prompts_and_its_portraits(apps_engine, model_store):
    import shutil

    from huabu.core.requests import GenerateRequest
    from huabu.engine.models import BOOK_FOLDER
    from huabu.tiny import scenes as S
    from huabu.training.portrait import own_styles

    book = model_store["folder"] / BOOK_FOLDER
    book.mkdir()
    try:
        (book / "styles.yaml").write_text('- {name: pinkish, name_zh: 粉色背景, name_en: Pink backdrop, '
                                          'prompt: "{prompt} on a pink background"}\n', encoding="utf-8")
        assert own_styles(apps_engine, "tiny-sd") == ["pinkish"]
        assert {"pinkish", "photo_portrait"} <= set(apps_engine.prompt_book("tiny-sd").styles)
        request = GenerateRequest.create(prompt="a cat", styles=["pinkish"], model="tiny-sd")
        assert apps_engine.prompter.prompts(request)[0] == "a cat on a pink background"
    finally:
        shutil.rmtree(book)
    assert "pinkish" not in apps_engine.prompt_book("tiny-sd").styles  # looked up again, as the folder changes
    # huabu-tiny's own: twenty styles, every word one its training captions use
    tiny = own_styles(apps_engine, "huabu-tiny")
    words = {"on", "a", "an", "background", *S.COLOUR_NAMES, *" ".join(S.POSITION_PHRASES.values()).split()}
    assert "an orange background" in S.single_caption(0, "orange", None, None)  # "an", as the captions write it
    templates = [apps_engine.prompt_book("huabu-tiny").styles[name].prompt for name in tiny]
    assert len(tiny) == 20 and all(set(t.replace("{prompt}", "").split()) <= words for t in templates)
    assert "photo_portrait" in apps_engine.prompt_book("huabu-tiny").styles  # still named by hand


def test_portrait_style_can_join_after_the_subject_is_drawn():
    from huabu.engine.prompts.book import load_book
    from huabu.training.portrait import render_prompt

    request = AppRequest.create(app="portrait", photos="p", name="zqx", style_start=0.5)
    prompt, negative, styles = render_prompt(request, "photo_portrait", load_book())
    assert prompt.startswith("<lora:portrait-zqx:1> [a zqx:portrait photograph of a zqx, 85mm lens")
    assert prompt.endswith(":0.5]") and styles == [] and negative.startswith("cartoon")
    plain = render_prompt(request.model_copy(update={"style_start": 0.0}), "photo_portrait", load_book())
    assert plain == ("<lora:portrait-zqx:1> a zqx", "", ["photo_portrait"])
