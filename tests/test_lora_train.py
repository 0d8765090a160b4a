"""`huabu train lora` on the tiny conftest model: the loss falls, the file is kohya's with ss_* metadata (read back
with safetensors), samples go through the engine, and a killed or cancelled run resumes to identical weights."""

import hashlib
import json
import shutil
import struct
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from training_support import Killed, assert_same, kill_after

from huabu.core.errors import HuabuError
from huabu.core.lora_request import TrainLoraRequest
from huabu.training import lora as lora_train
from huabu.training.loop import optimizer_step


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Four 32x32 'red paper-cut' images with captions, one more captioned by the template."""
    folder = tmp_path_factory.mktemp("lora-data")
    for i in range(5):
        image = Image.new("RGB", (32, 32), (190 + 10 * i, 20, 20))
        image.paste((250, 200, 40), (6 + i, 6, 18 + i, 20))
        image.save(folder / f"img{i}.png")
        if i < 4:
            (folder / f"img{i}.txt").write_text(f"zqx paper cut, red, gold{', dragon' if i % 2 else ''}")
    return folder


def _request(images: Path, model_store, tmp_path: Path, name: str, **fields) -> TrainLoraRequest:
    base = dict(data=str(images), out=str(tmp_path / f"{name}.safetensors"), base=str(model_store["folder"]),
                rank=4, alpha=2, steps=4, batch=2, lr=1e-2, resolution=32, trigger="zqx", train_text_encoder=True,
                checkpoint_every=2, sample_every=4, sample_steps=3, seed=3, workdir=str(tmp_path / f"{name}-run"))
    return TrainLoraRequest.create(**{**base, **fields})


@pytest.fixture(scope="module")
def straight(images, model_store, settings, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("straight")
    return lora_train.train_lora(_request(images, model_store, tmp, "straight"), settings)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_written_file_has_kohya_keys_and_metadata_that_tools_read(straight):
    with safe_open(str(straight), framework="pt") as f:
        keys, metadata = set(f.keys()), f.metadata()
    stem = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    assert {f"{stem}.lora_down.weight", f"{stem}.lora_up.weight", f"{stem}.alpha"} <= keys
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in keys
    assert "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0.lora_up.weight" in keys
    expected = {"ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "2.0",
                "ss_base_model_version": "sd_v1", "ss_resolution": "(32, 32)", "ss_steps": "4",
                "ss_sd_model_name": "tiny-sd", "huabu_trigger_word": "zqx", "ss_output_name": "straight"}
    assert {k: metadata[k] for k in expected} == expected
    (folder, tags), = json.loads(metadata["ss_tag_frequency"]).items()
    assert folder.startswith("lora-data")
    assert tags["zqx paper cut"] == 4 and tags["dragon"] == 2 and tags["a photo of zqx"] == 1
    assert len(metadata["huabu_dataset_hash"]) == 64
    raw = straight.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    assert metadata["sshs_model_hash"] == hashlib.sha256(raw[8 + length:]).hexdigest()
    with safe_open(str(straight), framework="pt") as f:
        assert f.get_tensor(f"{stem}.alpha").item() == 2.0 and f.get_tensor(f"{stem}.lora_down.weight").shape[0] == 4


def test_samples_go_through_the_engine_with_the_lora(straight):
    from huabu.core.pnginfo import read_parameters

    run = straight.parent / "straight-run"
    samples = sorted((run / "samples").glob("*.png"))
    assert [p.name for p in samples] == ["step-0000004-0.png"]
    text = read_parameters(samples[0])
    # The LoRA, given to the engine outside the prompt, is written into the prompt line as its tag.
    assert text.startswith(f"a photo of zqx <lora:{run / 'lora-latest.safetensors'}:1>\n")
    assert 'Lora hashes: "lora-latest: ' in text
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_training_lowers_the_loss(images, model_store, settings, tmp_path):
    run = lora_train.setup(_request(images, model_store, tmp_path, "loss", train_text_encoder=False, lr=2e-2),
                           settings)

    def fixed_loss() -> float:  # the same noise and timesteps before and after
        generator, total = torch.Generator().manual_seed(1), 0.0
        with torch.no_grad():
            for latents, ids in zip(run.latents, run.input_ids):
                for t in (100, 300, 500, 700, 900):
                    noise = torch.randn(latents[None].shape, generator=generator)
                    total += lora_train.diffusion_loss(run.unet, run.text_encoder, run.noise_scheduler, latents[None],
                                                       ids[None], noise, torch.tensor([t])).item()
        return total / (5 * len(run.latents))

    before = fixed_loss()
    recipe, lrs = lora_train.recipe(run), [group["lr"] for group in run.optimizer.param_groups]
    for step in range(15):
        optimizer_step(recipe, step, lrs, run.request.max_grad_norm)
    assert fixed_loss() < before - 0.02


def test_killed_run_resumes_to_the_same_weights(straight, images, model_store, settings, tmp_path, monkeypatch):
    request = _request(images, model_store, tmp_path, "killed", sample_every=0)  # samples change no weights
    with monkeypatch.context() as m:
        kill_after(m, 2)
        with pytest.raises(Killed):
            lora_train.train_lora(request, settings)
    assert [p.name for p in (tmp_path / "killed-run" / "checkpoints").iterdir()] == ["step-0000002"]
    with pytest.raises(HuabuError, match="pass --resume"):
        lora_train.train_lora(request, settings)
    resumed = lora_train.train_lora(request.model_copy(update={"resume": True}), settings)
    assert_same(_tensors(straight), _tensors(resumed))
    step4 = "checkpoints/step-0000004/lora.safetensors"
    assert_same(_tensors(straight.parent / "straight-run" / step4), _tensors(tmp_path / "killed-run" / step4))


def test_cancel_writes_a_checkpoint_and_the_lora_so_far(straight, images, model_store, settings, tmp_path):
    cancel = threading.Event()
    request = _request(images, model_store, tmp_path, "cancelled", checkpoint_every=100, sample_every=0)
    steps = []

    def progress(p):
        steps.append(p.step)
        if p.step == 3:
            cancel.set()

    path = lora_train.train_lora(request, settings, progress=progress, cancel=cancel)
    assert steps == [1, 2, 3]
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["ss_steps"] == "3"
    assert [p.name for p in (tmp_path / "cancelled-run" / "checkpoints").iterdir()] == ["step-0000003"]
    resumed = lora_train.train_lora(request.model_copy(update={"resume": True}), settings)
    assert_same(_tensors(straight), _tensors(resumed))
    with pytest.raises(HuabuError, match="made with rank = 4, this run has 8") as err:
        lora_train.train_lora(request.model_copy(update={"resume": True, "rank": 8}), settings)
    assert "\n" not in str(err.value)


def test_model_errors_are_one_line(images, model_store, settings, tmp_path):
    with pytest.raises(HuabuError, match="resolution 40 is not a multiple of 32") as err:
        lora_train.train_lora(_request(images, model_store, tmp_path, "odd", resolution=40), settings)
    assert "use 32 or 64" in str(err.value)


def test_cli_trains_and_errors(images, model_store, huabu_env, capsys):
    from huabu.cli.main import main

    code = main(["train", "lora", "--data", str(images), "--out", "cli-lora", "--base", str(model_store["folder"]),
                 "--steps", "2", "--resolution", "32", "--trigger", "zqx", "--rank", "2", "--device", "cpu",
                 "--format", "diffusers"])
    assert code == 0
    path = huabu_env / "loras" / "cli-lora.safetensors"
    assert capsys.readouterr().out.strip() == str(path) and path.is_file()
    with safe_open(str(path), framework="pt") as f:
        assert "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight" in f.keys()
        assert json.loads(f.metadata()["lora_adapter_metadata"])["unet.r"] == 2
    written = path.read_bytes()
    again = ["train", "lora", "--data", str(images), "--out", "cli-lora", "--base", str(model_store["folder"]),
             "--steps", "1", "--resolution", "32", "--trigger", "zqx", "--rank", "2", "--device", "cpu"]
    assert main(again) == 2 and path.read_bytes() == written  # an installed LoRA is never replaced unasked
    assert capsys.readouterr().err.strip().splitlines()[-1] == (f"error: {path} already exists: pick another --out, "
                                                                f"or pass --overwrite to replace it")
    shutil.rmtree(huabu_env / "lora-training" / "cli-lora")  # its checkpoints would ask for --resume instead
    assert main([*again, "--overwrite"]) == 0 and path.read_bytes() != written
    capsys.readouterr()
    empty = huabu_env / "empty"
    empty.mkdir()
    assert main(["train", "lora", "--data", str(empty), "--out", "x", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: no training images in") and len(err) == 1
