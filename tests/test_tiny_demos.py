"""huabu-tiny's demonstrations on a toy huabu-tiny-shaped model: the ControlNet preset, shipping ControlNets and motion
modules where the engine finds them, the LoRA datasets, and the eval-control / eval-video / eval-lora commands."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from training_support import toy_stages

from huabu.cli.main import main
from huabu.tiny import lora_data as L
from huabu.tiny import scenes as S


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    """A toy huabu-tiny (assembled from random toy stages, fp16, in models/huabu-tiny), a 12-scene dataset and the
    latent cache of its first 8 scenes made by the model's VAE, as the UNet stage writes it (float16)."""
    import torch
    from diffusers import AutoencoderKL

    from huabu.tiny.assemble import assemble
    from huabu.tiny.data import load_dataset, write_dataset

    root = tmp_path_factory.mktemp("demos")
    torch.manual_seed(0)
    stages = toy_stages(root)
    model = assemble(stages["clip"], stages["vae"], stages["unet"], root / "models" / "huabu-tiny")
    data = write_dataset(root / "scenes", 12, seed=3, progress=False)
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae", dtype=torch.float32)
    with torch.no_grad():
        pixels = torch.from_numpy(np.array(load_dataset(data).images[:8])).permute(0, 3, 1, 2).float() / 127.5 - 1
        latents = (vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor).numpy().astype(np.float16)
    np.save(root / "latents.npy", latents)
    return {"root": root, "model": model, "data": data, "latents": root / "latents.npy"}


@pytest.fixture
def env(toy, monkeypatch, tmp_path):
    monkeypatch.setenv("HUABU_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HUABU_DEVICE", "cpu")
    return tmp_path


def _dtypes(folder: Path) -> set[str]:
    """Tensor dtypes of a folder's safetensors files, read from their headers (8-byte length + JSON)."""
    found = set()
    for path in folder.glob("*.safetensors"):
        raw = path.read_bytes()
        (length,) = struct.unpack("<Q", raw[:8])
        found |= {v["dtype"] for k, v in json.loads(raw[8:8 + length]).items() if k != "__metadata__"}
    return found


def _json_line(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def shipped(toy, tmp_path_factory) -> dict[str, Path]:
    """The toy model's ControlNets (canny trained two steps by `huabu tiny train controlnet`, color random) and
    motion module, shipped with `huabu tiny ship-controlnet` / `ship-motion`."""
    import torch
    from conftest import build_tiny_controlnet
    from diffusers import UNet2DConditionModel

    from huabu.training.motion import build_motion_adapter

    runs = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HUABU_HOME", str(runs / "home"))
        assert main(["tiny", "train", "controlnet", "--base", str(toy["model"]), "--data", str(toy["data"]),
                     "--latents", str(toy["latents"]), "--out", str(runs / "canny"), "--steps", "2",
                     "--batch-size", "2", "--checkpoint-every", "2", "--sample-every", "100", "--samples", "1",
                     "--sample-steps", "1"]) == 0
        unet = UNet2DConditionModel.from_pretrained(toy["model"], subfolder="unet", dtype=torch.float32)
        build_tiny_controlnet(unet, seed=5).save_pretrained(runs / "color" / "final")
        torch.manual_seed(0)
        build_motion_adapter(unet, heads=2, max_frames=8).save_pretrained(runs / "motion" / "final")
        for kind in ("canny", "color"):
            assert main(["tiny", "ship-controlnet", str(runs / kind), "--type", kind, "--model",
                         str(toy["model"])]) == 0
        assert main(["tiny", "ship-motion", str(runs / "motion"), "--model", str(toy["model"])]) == 0
    models = toy["model"].parent
    return {"runs": runs, "canny": models / "huabu-tiny-controlnet-canny",
            "color": models / "huabu-tiny-controlnet-color", "motion": toy["model"] / "motion_adapter"}


# --- ControlNet preset and shipping ---------------------------------------------------------------------------

def test_controlnet_preset_trains_on_the_first_scenes_of_the_latent_cache(shipped):
    run = shipped["runs"] / "canny"
    config = json.loads((run / "config.json").read_text())
    assert config["type"] == "canny" and config["batch_size"] == 2 and config["latents"].endswith("latents.npy")
    assert not (run / "latents.npy").exists()  # the cache was used, nothing re-encoded
    assert (run / "final" / "config.json").is_file()


def test_controlnet_preset_refuses_latents_of_another_vae(toy, env, capsys):
    wrong = env / "wrong.npy"
    np.save(wrong, np.load(toy["latents"]) * 2)
    code = main(["tiny", "train", "controlnet", "--base", str(toy["model"]), "--data", str(toy["data"]),
                 "--latents", str(wrong), "--out", str(env / "run"), "--steps", "1"])
    assert code == 2 and "not made by the base model's VAE" in capsys.readouterr().err


def test_shipped_folders_are_fp16_load_back_and_leave_the_pipeline_loadable(toy, shipped, env, capsys):
    import torch
    from diffusers import ControlNetModel, MotionAdapter, StableDiffusionPipeline

    assert main(["tiny", "ship-controlnet", str(shipped["runs"] / "canny"), "--type", "color", "--model",
                 str(toy["model"])]) == 2
    assert "trained a canny ControlNet, not color" in capsys.readouterr().err

    for kind in ("canny", "color"):
        assert _dtypes(shipped[kind]) == {"F16"}
        net = ControlNetModel.from_pretrained(shipped[kind])
        assert list(net.config.conditioning_embedding_out_channels) == [16, 32, 64]  # shrinks 4x, the VAE's factor
    trained = ControlNetModel.from_pretrained(shipped["runs"] / "canny" / "final")
    shipped_net = ControlNetModel.from_pretrained(shipped["canny"], dtype=torch.float32)
    key = "controlnet_cond_embedding.conv_in.weight"
    assert torch.equal(shipped_net.state_dict()[key], trained.state_dict()[key].half().float())
    assert _dtypes(shipped["motion"]) == {"F16"}
    assert MotionAdapter.from_pretrained(shipped["motion"]).config.block_out_channels == [32, 32, 32]
    pipe = StableDiffusionPipeline.from_pretrained(toy["model"], local_files_only=True)  # motion_adapter/ ignored
    assert set(pipe.components) >= {"unet", "vae", "text_encoder"} and "motion_adapter" not in pipe.components


def test_engine_uses_the_shipped_controlnet_and_motion_module_by_default(toy, shipped, tmp_path):
    from huabu.core.requests import GenerateRequest
    from huabu.core.settings import Settings
    from huabu.engine.generate import Engine
    from huabu.engine.motion_modules import resolve_motion_module
    from huabu.tiny.eval_control import png_data_url

    engine = Engine(Settings.for_home(tmp_path, device="cpu", dtype="fp32"))
    scene = S.eval_single_scenes(1)[0]
    real = S.render(scene.background, scene.objects)
    unit = {"module": "canny", "image": png_data_url(real), "pixel_perfect": True}
    result = engine.generate(GenerateRequest.create(prompt=scene.caption, model=str(toy["model"]), steps=2, seed=1,
                                                    controlnets=[unit]))
    assert 'Model: huabu-tiny-controlnet-canny [' in result.infotexts[0]
    model = engine.models.load(str(toy["model"]))
    title = result.infotexts[0].split("Model: ")[-1].split("]")[0] + "]"
    assert engine.controlnets.resolve(title, "canny", model_path=model.ref.path).location == str(shipped["canny"])
    assert resolve_motion_module(None, engine.settings, model.ref).location == str(shipped["motion"])


def test_the_engine_makes_exactly_the_training_control_map_from_a_real_scene(toy, shipped, tmp_path):
    from huabu.core.requests import ControlUnit
    from huabu.core.settings import Settings
    from huabu.engine.control.registry import preprocess
    from huabu.engine.controlnets import check_units
    from huabu.engine.generate import Engine
    from huabu.tiny.eval_control import png_data_url
    from huabu.training.controlnet import control_maps

    engine = Engine(Settings.for_home(tmp_path, device="cpu", dtype="fp32"))
    model = engine.models.load(str(toy["model"]))
    scene = S.eval_pair_scenes(1)[0]
    real = S.render(scene.background, scene.objects)
    for kind in ("canny", "color"):
        unit = ControlUnit(module=kind, image=png_data_url(real), pixel_perfect=True, resize_mode="Just Resize")
        plan = engine.controlnets.plan(check_units([unit]), model)
        made = np.asarray(plan.control_map(plan.units[0], 64, 64))
        trained_on = (control_maps(kind, real[None])[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert np.array_equal(made, trained_on)
        assert np.array_equal(made, np.asarray(preprocess(kind, Image.fromarray(real))))


# --- evaluations ------------------------------------------------------------------------------------------------

def test_eval_control_prompts_name_the_objects_or_give_the_whole_caption():
    from huabu.tiny.eval_control import scene_prompt

    single, pair = S.eval_single_scenes(1)[0], S.eval_pair_scenes(1)[0]
    assert scene_prompt(single, "caption") == single.caption
    assert scene_prompt(single, "objects") == f"a {S.OBJECT_NAMES[single.objects[0].obj]}"
    a, b = (S.OBJECT_NAMES[p.obj] for p in pair.objects)
    assert scene_prompt(pair, "objects") == f"a {a} and a {b}"
    assert "background" not in scene_prompt(pair, "objects")


def test_eval_control_prints_every_figure(toy, shipped, env, capsys, tmp_path):
    grid = tmp_path / "control.png"
    assert main(["tiny", "eval-control", "--model", str(toy["model"]), "--singles", "2", "--pairs", "1",
                 "--steps", "2", "--json", "--grid", str(grid)]) == 0
    r = _json_line(capsys)
    # 3 prompts across; rows: real scenes, canny maps, canny outputs, colour maps, colour outputs, no control
    assert Image.open(grid).size == (3 * 64 * 2, 6 * 64 * 2)
    assert r["controlnets"] == {"canny": "huabu-tiny-controlnet-canny", "color": "huabu-tiny-controlnet-color"}
    for key in ("edge_f1", "edge_f1_uncontrolled", "edge_f1_vae", "colour_error", "colour_error_uncontrolled",
                "colour_error_vae"):
        assert 0.0 <= r[key] <= 1.0, key
    assert r["colour_error"] != r["colour_error_uncontrolled"]  # the random ControlNet steers
    assert r["colour_error_ratio"] == pytest.approx(r["colour_error"] / r["colour_error_uncontrolled"])
    assert isinstance(r["edge_target_met"], bool) and isinstance(r["colour_target_met"], bool)
    assert r["settings"]["seeds"] == [0, 2] and r["settings"]["prompt"] == "objects"
    assert main(["tiny", "eval-control", "--prompt", "layout"]) == 2
    assert "--prompt takes objects or caption" in capsys.readouterr().err
    assert main(["tiny", "eval-control", "--model", str(toy["model"]), "--singles", "1", "--pairs", "0",
                 "--steps", "1", "--types", "color", "--controlnet", str(shipped["color"])]) == 0
    report = capsys.readouterr().out
    assert "colour-map error" in report and "edge F1" not in report
    assert main(["tiny", "eval-control", "--controlnet", str(shipped["color"])]) == 2  # one ControlNet, two types
    assert "--controlnet names one ControlNet" in capsys.readouterr().err


def test_eval_video_prints_every_figure_and_the_real_clip_ceiling(toy, shipped, env, capsys):
    assert main(["tiny", "eval-video", "--model", str(toy["model"]), "--clips", "2", "--frames", "4", "--steps", "2",
                 "--json"]) == 0
    r = _json_line(capsys)
    assert set(r) >= {"direction_accuracy", "per_motion", "frame_consistency", "target_met",
                      "real_direction_accuracy", "real_per_motion", "real_frame_consistency"}
    assert set(r["per_motion"]) == {"left", "right"}  # eval scenes cycle through the motions
    assert r["real_direction_accuracy"] == 1.0 and 0.0 <= r["direction_accuracy"] <= 1.0
    assert -1.0 <= r["frame_consistency"] <= 1.0
    assert r["settings"]["motion"] == "huabu-tiny/motion_adapter"  # the model's own, found by default


# --- LoRA data and eval-lora ----------------------------------------------------------------------------------

def test_lora_datasets_are_deterministic_with_the_right_captions(env, capsys):
    assert main(["tiny", "lora-data", "style", "--out", str(env / "style"), "--count", "6"]) == 0
    first = {p.name: p.read_bytes() for p in (env / "style").iterdir()}
    assert main(["tiny", "lora-data", "style", "--out", str(env / "style"), "--count", "6"]) == 0
    assert {p.name: p.read_bytes() for p in (env / "style").iterdir()} == first
    captions = [(env / "style" / f"papercut-{i:04d}.txt").read_text().strip() for i in range(6)]
    expected = L.style_scenes(6)
    assert captions == [s.caption for s in expected] and all(c.endswith(", paper-cut style") for c in captions)
    assert all(s.background != "red" for s in expected)
    image = np.asarray(Image.open(env / "style" / "papercut-0000.png"))
    assert image.shape == (64, 64, 3) and np.array_equal(image, L.render_papercut(expected[0]))

    assert main(["tiny", "lora-data", "subject", "--out", str(env / "subject")]) == 0
    texts = sorted((env / "subject").glob("*.txt"))
    assert len(texts) == 16 and len(list((env / "subject").glob("*.png"))) == 16
    for text in texts:
        caption = text.read_text().strip()
        assert caption.split()[:3] in (["a", "small", "hbdragon"], ["a", "large", "hbdragon"])
        assert caption.endswith("background")
    assert L.DRAGON not in {ch for ch, _ in S.OBJECTS} and not any("dragon" in name for name in S.OBJECT_NAMES)
    trained = {(s.background, s.position) for s in L.subject_scenes(16)}
    held_out = {(s.background, s.position) for s in L.subject_eval_scenes(30)}
    assert trained.isdisjoint(held_out) and len(held_out) == 30
    (env / "mine").mkdir()
    (env / "mine" / "keep.txt").write_text("x")
    assert main(["tiny", "lora-data", "subject", "--out", str(env / "mine")]) == 2  # never wipes a foreign folder
    assert (env / "mine" / "keep.txt").is_file()


def test_large_lora_data_is_the_training_world_drawn_at_twice_the_size(env):
    assert main(["tiny", "lora-data", "large", "--out", str(env / "large"), "--count", "3"]) == 0
    for i in range(3):
        scene = S.training_scene(7, i)
        image = np.asarray(Image.open(env / "large" / f"large-{i:05d}.png"))
        assert image.shape == (128, 128, 3)
        assert (env / "large" / f"large-{i:05d}.txt").read_text().strip() == scene.caption
        small = np.asarray(Image.fromarray(image).resize((64, 64), Image.BOX), dtype=np.int16)
        assert np.abs(small - S.render(scene.background, scene.objects)).mean() < 6  # the same layout, redrawn


def test_style_target_histogram_differs_from_plain_renders():
    from huabu.tiny.eval_lora import histogram_distance, target_histogram

    scenes = L.style_eval_scenes(8)
    target = target_histogram([L.render_papercut(s) for s in scenes])
    papercut = np.mean([histogram_distance(L.render_papercut(s), target) for s in scenes])
    plain = np.mean([histogram_distance(S.render(s.background, s.objects), target) for s in scenes])
    assert papercut < 0.2 and plain > 0.6, (papercut, plain)
    assert histogram_distance(np.full((64, 64, 3), 128, np.uint8), target) == 1.0  # no object at all


def test_dragon_reading_on_real_renders():
    from huabu.tiny.eval_lora import read_dragon

    scenes = L.subject_eval_scenes(6)
    assert all(read_dragon(L.render_subject(s), s.size) == (True, pytest.approx(0.0, abs=2e-3)) for s in scenes)
    single = S.eval_single_scenes(3)
    assert not any(read_dragon(S.render(s.background, s.objects), s.objects[0].size)[0] for s in single)


@pytest.fixture(scope="module")
def toy_lora(toy, tmp_path_factory) -> Path:
    """A LoRA for the toy model trained two steps by `huabu train lora` on four subject images (lr high enough to
    change the output visibly)."""
    from huabu.core.lora_request import TrainLoraRequest
    from huabu.core.settings import Settings
    from huabu.training.lora import train_lora

    root = tmp_path_factory.mktemp("lora")
    L.write_lora_data("subject", root / "data", count=4)
    request = TrainLoraRequest.create(data=str(root / "data"), out=str(root / "dragon.safetensors"),
                                      base=str(toy["model"]), rank=2, alpha=2, steps=2, lr=5e-2, batch=2,
                                      workdir=str(root / "run"))
    return train_lora(request, Settings.for_home(root / "home", device="cpu", dtype="fp32"))


def test_eval_lora_weight_zero_gives_the_base_figures(toy, toy_lora, tmp_path):
    from huabu.core.settings import Settings
    from huabu.engine.generate import Engine
    from huabu.tiny.demo_configs import LoraEvalConfig
    from huabu.tiny.eval_control import generate
    from huabu.tiny.eval_lora import evaluate_lora, format_lora_report, score_style, score_subject, target_histogram

    engine = Engine(Settings.for_home(tmp_path, device="cpu", dtype="fp32"))
    cfg = LoraEvalConfig(model=str(toy["model"]), style=str(toy_lora), subject=str(toy_lora), weights=(1.0,),
                         count=2, steps=2)
    r = evaluate_lora(cfg, engine=engine)
    assert r["weights"] == [0.0, 1.0]
    style_scenes, subject_scenes = L.style_eval_scenes(2), L.subject_eval_scenes(2)
    base_style = generate(engine, cfg.model, [s.caption + L.STYLE_SUFFIX for s in style_scenes], cfg)
    base_subject = generate(engine, cfg.model, [s.caption for s in subject_scenes], cfg)
    target = target_histogram([L.render_papercut(s) for s in style_scenes])
    assert r["style"]["rows"][0] == {"weight": 0.0, **score_style(base_style, style_scenes, target)}
    assert r["subject"]["rows"][0] == {"weight": 0.0, **score_subject(base_subject, subject_scenes)}
    with_lora = generate(engine, cfg.model, [subject_scenes[0].caption], cfg,
                         lambda i: {"loras": [{"name": str(toy_lora), "weight": 1.0}]})
    assert not np.array_equal(with_lora[0], base_subject[0])  # the LoRA is really applied at weight 1
    for part in ("style", "subject"):
        assert isinstance(r[part]["closer_with_weight"], bool)
        assert isinstance(r[part]["adherence_within_10_points"], bool)
    assert r["style"]["real_papercut"]["histogram_distance"] < r["style"]["real_plain"]["histogram_distance"]
    assert r["subject"]["real_dragon"]["dragon_top1"] == 1.0
    report = format_lora_report(r)
    assert "colour distance" in report and "dragon top-1" in report
    json.dumps(r)


def test_eval_lora_cli_needs_a_lora(env, capsys):
    assert main(["tiny", "eval-lora"]) == 2
    assert "--style FILE and/or --subject FILE" in capsys.readouterr().err
