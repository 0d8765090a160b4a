"""A1111 sampler names and schedule types -> diffusers schedulers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from huabu.core import samplers
from huabu.core.errors import InvalidRequest
from huabu.core.requests import GenerateRequest
from huabu.engine.samplers import build_scheduler

SD_SCHEDULER = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
                "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "set_alpha_to_one": False,
                "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None}
V_PREDICTION = {**SD_SCHEDULER, "_class_name": "DDIMScheduler", "prediction_type": "v_prediction"}

REQUIRED = ["Euler", "Euler a", "Heun", "LMS", "DDIM", "PLMS", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE",
            "DPM++ 2S a", "DPM++ 3M SDE", "DPM2", "DPM2 a", "UniPC", "LCM"]


@pytest.mark.parametrize("text, sampler, schedule", [
    ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),
    ("DPM++ SDE Karras", "DPM++ SDE", "Karras"),
    ("dpm++ 2m sde exponential", "DPM++ 2M SDE", "Exponential"),
    ("DPM++ 2M SDE Heun", "DPM++ 2M SDE Heun", "Exponential"),  # a sampler name, not "SDE" + schedule "Heun"
    ("k_euler_a", "Euler a", "Uniform"),
    ("Euler SGMUniform", "Euler", "SGM Uniform"),
    ("DPM++ 2M", "DPM++ 2M", "Karras"),  # A1111 1.10: Automatic means Karras for DPM++ 2M
    ("DDIM", "DDIM", "Automatic"),
])
def test_names_parse_as_a1111_does(text, sampler, schedule):
    assert samplers.canonical_names(text) == (sampler, schedule)


def test_explicit_schedule_wins_over_the_name():
    assert samplers.canonical_names("DPM++ 2M Karras", "Exponential") == ("DPM++ 2M", "Exponential")
    assert samplers.canonical_names("DPM++ 2M Karras", "Automatic") == ("DPM++ 2M", "Karras")


def test_unknown_names_list_close_matches():
    with pytest.raises(InvalidRequest, match=r"^unknown sampler 'Eulr a'; did you mean 'Euler a'"):
        samplers.parse_sampler("Eulr a")
    with pytest.raises(InvalidRequest, match="diffusers has no scheduler for"):
        samplers.parse_sampler("DPM adaptive")
    with pytest.raises(InvalidRequest, match=r"^unknown schedule type 'Karas'; did you mean 'Karras'"):
        samplers.parse_sampler("Euler", "Karas")


def test_required_samplers_are_listed():
    names = [row["name"] for row in samplers.list_samplers()]
    assert set(REQUIRED) <= set(names)
    assert {"name": "karras", "label": "Karras", "aliases": None} in samplers.list_schedules()


@pytest.mark.parametrize("name", [s.name for s in samplers.SAMPLERS])
def test_schedulers_are_built_from_the_model_config_and_serialise(name):
    scheduler = build_scheduler(name, "Automatic", V_PREDICTION, seeds=[1, 2])
    assert type(scheduler).__name__ == samplers.parse_sampler(name)[0].scheduler
    assert scheduler.config.prediction_type == "v_prediction"  # kept from the model
    assert scheduler.config.beta_schedule == "scaled_linear"
    rebuilt = type(scheduler).from_config(json.loads(scheduler.to_json_string()))
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(rebuilt.config) == public(scheduler.config)


def test_schedule_types_set_config_fields():
    karras = build_scheduler("DPM++ 2M", "Karras", SD_SCHEDULER)
    uniform = build_scheduler("DPM++ 2M", "Uniform", SD_SCHEDULER)
    sgm = build_scheduler("Euler", "SGM Uniform", SD_SCHEDULER)
    sde = build_scheduler("DPM++ 2M SDE", None, SD_SCHEDULER)
    assert karras.config.use_karras_sigmas and not uniform.config.use_karras_sigmas
    assert uniform.config.timestep_spacing == "linspace" and sgm.config.timestep_spacing == "trailing"
    assert sde.config.algorithm_type == "sde-dpmsolver++" and sde.config.use_exponential_sigmas
    karras.set_timesteps(10)
    uniform.set_timesteps(10)
    assert not np.allclose(karras.sigmas.numpy(), uniform.sigmas.numpy())
    dpmpp_sde = build_scheduler("DPM++ SDE", None, SD_SCHEDULER, seeds=[5, 6])
    assert dpmpp_sde.config.noise_sampler_seed == [5, 6]  # Brownian noise per image, so batches reproduce


def test_unavailable_combination_is_one_line():
    with pytest.raises(InvalidRequest, match=r"^schedule type 'Karras' is not available with sampler 'Euler a'"):
        build_scheduler("Euler a", "Karras", SD_SCHEDULER)


def test_request_rejects_unknown_sampler():
    with pytest.raises(InvalidRequest, match="unknown sampler"):
        GenerateRequest.create(sampler="Euler b")


def test_every_sampler_runs_and_karras_changes_the_image(engine, model_store):
    images = {}
    for name in REQUIRED + ["DPM++ 2M Karras", "DPM++ SDE Karras"]:
        schedule = "Uniform" if name == "DPM++ 2M" else "Automatic"
        request = GenerateRequest.create(prompt="a red apple", steps=3, width=32, height=32, seed=3, sampler=name,
                                         schedule_type=schedule, model=str(model_store["folder"]))
        result = engine.generate(request)
        images[name] = np.asarray(result.images[0], dtype=np.int16)
        assert images[name].shape == (32, 32, 3) and images[name].std() > 1, name
    assert np.abs(images["DPM++ 2M Karras"] - images["DPM++ 2M"]).max() > 0  # Karras vs Uniform sigmas
    assert np.abs(images["Euler"] - images["Euler a"]).max() > 0
