"""Request models (a job is JSON data with one-line validation errors) and explicit settings."""

from __future__ import annotations

import json

import pytest

from huabu.core.errors import InvalidRequest
from huabu.core.requests import ControlUnit, GenerateRequest
from huabu.core.settings import Settings


def test_request_is_json_data_and_round_trips():
    request = GenerateRequest.create(prompt="a (red:1.2) apple", steps=30, sampler="DPM++ 2M Karras",
                                     loras=[{"name": "style", "weight": 0.7}],
                                     controlnets=[{"module": "canny", "model": "control_canny", "weight": 0.5}])
    data = json.loads(json.dumps(request.to_data()))
    assert GenerateRequest.from_data(data) == request
    assert data["controlnets"][0]["guidance_end"] == 1.0 and data["loras"][0]["te_weight"] is None
    assert isinstance(request.controlnets[0], ControlUnit)


@pytest.mark.parametrize("fields, message", [
    ({"steps": 151}, "steps must be between 1 and 150 (got 151)"),
    ({"cfg_scale": -1}, "cfg_scale must be between 0.0 and 30.0 (got -1)"),
    ({"batch_size": 0}, "batch_size must be between 1 and 16 (got 0)"),
    ({"n_iter": 101}, "n_iter must be between 1 and 100 (got 101)"),
    ({"seed": -2}, f"seed must be between -1 and {2**32 - 1} (got -2)"),
    ({"denoising_strength": 1.5}, "denoising_strength must be between 0.0 and 1.0 (got 1.5)"),
    ({"width": 4}, "width must be between 8 and 4096 (got 4)"),
    ({"mode": "outpaint"}, "mode must be 'txt2img', 'img2img' or 'inpaint' (got 'outpaint')"),
    ({"mode": "img2img"}, "img2img needs an input image (init_image / --image)"),
    ({"mode": "inpaint", "init_image": "a.png"}, "inpaint needs a mask image"),
    ({"init_image": "a.png"}, "txt2img takes no input image or mask"),
    ({"sampler": "Euler z"}, "unknown sampler 'Euler z'"),
    ({"schedule_type": "Align Your Steps"}, "schedule type 'Align Your Steps' has no diffusers equivalent"),
    ({"colour": "red"}, "unknown field 'colour'"),
    ({"controlnets": [{"weight": 3}]}, "controlnets.0.weight must be between 0.0 and 2.0 (got 3)"),
    ({"controlnets": [{"guidance_start": 0.9, "guidance_end": 0.1}]}, "must not exceed guidance_end"),
])
def test_bad_fields_give_one_line(fields, message):
    with pytest.raises(InvalidRequest) as err:
        GenerateRequest.create(**fields)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_settings_are_explicit_and_come_from_the_environment(tmp_path):
    env = {"HUABU_HOME": str(tmp_path), "HUABU_DEVICE": "cpu", "HUABU_ALLOW_UNSAFE_PICKLE": "1", "HF_HUB_OFFLINE": "1"}
    settings = Settings.from_env(env)
    assert settings.home == tmp_path and settings.models_dir == tmp_path / "models"
    assert settings.gallery_db == tmp_path / "gallery.sqlite" and settings.loras_dir == tmp_path / "loras"
    assert (settings.device, settings.allow_unsafe_pickle, settings.hub_offline) == ("cpu", True, True)
    assert Settings.from_env(env, device="cuda").device == "cuda"  # CLI flags win over the environment
    assert Settings.from_env({}).home.name == ".huabu"
    with pytest.raises(InvalidRequest, match="device must be one of auto, cpu, cuda, mps"):
        Settings.for_home(tmp_path, device="tpu")


def test_importing_huabu_modules_has_no_side_effects():
    import subprocess
    import sys

    probe = ("import sys, huabu.core.settings, huabu.core.requests, huabu.core.samplers, huabu.cli.main; "
             "print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
