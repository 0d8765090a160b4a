"""VAE choice on the tiny model: from the VAE folder (single file in LDM or diffusers keys, diffusers folder) or a
path; infotext VAE / VAE hash; reproduce; /sdapi/v1/sd-vae and sd_vae in override_settings and options."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file
from server_support import LOCAL, api_settings, decode_png, make_app

from huabu.cli.main import main
from huabu.core.errors import ModelNotFound
from huabu.core.pnginfo import parse_infotext, read_parameters
from huabu.core.requests import GenerateRequest
from huabu.engine.checkpoints import file_sha256


@pytest.fixture(scope="module")
def vae_files(model_store):
    """Another random VAE of the tiny model's shape, in the session home's VAE folder three ways."""
    import torch
    from diffusers import AutoencoderKL

    from huabu.engine.convert import vae_to_ldm

    own = AutoencoderKL.from_pretrained(model_store["folder"] / "vae")
    torch.manual_seed(42)
    other = AutoencoderKL.from_config(own.config)
    folder = model_store["home"] / "vae"
    folder.mkdir(exist_ok=True)
    other.save_pretrained(folder / "tiny-vae-folder")
    state = {k: v.contiguous() for k, v in other.state_dict().items()}
    save_file(vae_to_ldm(state, other.config), folder / "tiny-vae-ldm.safetensors")
    save_file(state, folder / "tiny-vae-diffusers.safetensors")
    return folder


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def request(model_store, **fields) -> GenerateRequest:
    return GenerateRequest.create(prompt="a red apple", steps=3, width=32, height=32, seed=8,
                                  model=str(model_store["folder"]), **fields)


def test_a_chosen_vae_decodes_and_is_named_with_its_hash(engine, model_store, vae_files):
    own = engine.generate(request(model_store))
    ldm = engine.generate(request(model_store, vae="tiny-vae-ldm.safetensors"))
    diffusers = engine.generate(request(model_store, vae="tiny-vae-diffusers"))
    folder = engine.generate(request(model_store, vae=str(vae_files / "tiny-vae-folder")))
    assert np.abs(arr(own.images[0]) - arr(ldm.images[0])).mean() > 5
    assert np.array_equal(arr(ldm.images[0]), arr(diffusers.images[0]))
    assert np.array_equal(arr(ldm.images[0]), arr(folder.images[0]))
    parsed = parse_infotext(ldm.infotexts[0])
    assert parsed["VAE"] == "tiny-vae-ldm.safetensors"
    assert parsed["VAE hash"] == file_sha256(vae_files / "tiny-vae-ldm.safetensors")[:10]
    keys = list(parsed)
    assert keys.index("Model") < keys.index("VAE hash") < keys.index("VAE")
    assert "VAE" not in parse_infotext(own.infotexts[0])
    again = engine.generate(request(model_store))  # the model's own VAE is back
    assert np.array_equal(arr(again.images[0]), arr(own.images[0]))


def test_a_missing_vae_is_one_line(engine, model_store, vae_files):
    with pytest.raises(ModelNotFound, match="VAE 'nope' is neither in"):
        engine.generate(request(model_store, vae="nope"))


def test_cli_vae_and_reproduce(huabu_env, capsys, tmp_path, vae_files):
    (huabu_env / "vae").symlink_to(vae_files)
    argv = ["generate", "a red apple", "--steps", "3", "--size", "32x32", "--model", "tiny-sd", "--seed", "3",
            "--vae", "tiny-vae-ldm", "-o", str(tmp_path)]
    assert main(argv) == 0, capsys.readouterr().err
    made = tmp_path / "00000-3.png"
    assert parse_infotext(read_parameters(made))["VAE"] == "tiny-vae-ldm.safetensors"
    capsys.readouterr()
    assert main(["reproduce", str(made)]) == 0
    assert capsys.readouterr().out == "match\n"


@pytest.fixture
def client(engine, model_store, tmp_path, vae_files):
    app = make_app(api_settings(model_store, tmp_path / "home"), engine)
    (tmp_path / "home" / "vae").symlink_to(vae_files)
    with TestClient(app, base_url=LOCAL) as test_client:
        yield test_client


def test_api_lists_and_uses_vaes(client, engine, model_store):
    names = [item["model_name"] for item in client.get("/sdapi/v1/sd-vae").json()]
    assert names == ["tiny-vae-diffusers.safetensors", "tiny-vae-folder", "tiny-vae-ldm.safetensors"]
    payload = {"prompt": "a red apple", "steps": 3, "width": 32, "height": 32, "seed": 8, "sampler_name": "DPM++ 2M",
               "override_settings": {"sd_model_checkpoint": "tiny-sd", "sd_vae": "tiny-vae-ldm.safetensors"}}
    body = client.post("/sdapi/v1/txt2img", json=payload).json()
    info = json.loads(body["info"])
    assert (info["sd_vae_name"], info["warnings"]) == ("tiny-vae-ldm.safetensors", [])
    direct = engine.generate(request(model_store, vae="tiny-vae-ldm.safetensors"))
    assert np.array_equal(arr(decode_png(body["images"][0])), arr(direct.images[0]))
    assert client.post("/sdapi/v1/options", json={"sd_vae": "tiny-vae-folder"}).status_code == 200
    by_option = json.loads(client.post("/sdapi/v1/txt2img", json={**payload, "override_settings": {
        "sd_model_checkpoint": "tiny-sd"}}).json()["info"])
    assert by_option["sd_vae_name"] == "tiny-vae-folder"
    bad = client.post("/sdapi/v1/txt2img", json={**payload, "override_settings": {"sd_vae": "/etc/passwd"}})
    assert bad.status_code == 400 and "not a VAE this server has" in bad.text
