"""A1111 sampler names and schedule types, and the diffusers scheduler configs they stand for.

The mapping follows diffusers' scheduler overview (A1111/k-diffusion -> diffusers table) and A1111 1.10's sampler
defaults: "Automatic" means the schedule A1111 gives that sampler (DPM++ 2M -> Karras, DPM++ 2M SDE ->
Exponential, Euler -> the model's own sigmas, i.e. Uniform). Every scheduler is built with `from_config` from
the loaded model's *original* scheduler config plus plain config overrides (huabu.engine.samplers), so it keeps
the model's prediction_type and beta schedule and stays serialisable; nothing is patched after construction.

The name tables are plain data so that requests can be validated without importing torch.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from huabu.core.errors import InvalidRequest


@dataclass(frozen=True)
class Sampler:
    name: str
    scheduler: str  # diffusers class name
    options: Mapping[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    # What "Automatic" means for this sampler (A1111 1.10); None keeps the model's own timestep spacing.
    default_schedule: str | None = None
    note: str = ""


@dataclass(frozen=True)
class Schedule:
    label: str
    options: Mapping[str, Any]
    aliases: tuple[str, ...] = ()


_DPM = "DPMSolverMultistepScheduler"

SAMPLERS: tuple[Sampler, ...] = (
    Sampler("DPM++ 2M", _DPM, {"algorithm_type": "dpmsolver++", "solver_order": 2}, ("k_dpmpp_2m",), "Karras"),
    Sampler("DPM++ SDE", "DPMSolverSDEScheduler", {}, ("k_dpmpp_sde",), "Karras"),
    Sampler("DPM++ 2M SDE", _DPM, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, ("k_dpmpp_2m_sde",),
            "Exponential"),
    Sampler("DPM++ 2M SDE Heun", _DPM, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"},
            ("k_dpmpp_2m_sde_heun",), "Exponential"),
    Sampler("DPM++ 2S a", "DPMSolverSinglestepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
            ("k_dpmpp_2s_a",), "Karras", note="diffusers' single-step SDE solver; close to, not the same as, A1111's"),
    Sampler("DPM++ 3M SDE", _DPM, {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, ("k_dpmpp_3m_sde",),
            "Exponential"),
    Sampler("Euler a", "EulerAncestralDiscreteScheduler", {}, ("k_euler_a", "k_euler_ancestral"), "Uniform"),
    Sampler("Euler", "EulerDiscreteScheduler", {}, ("k_euler",), "Uniform"),
    Sampler("LMS", "LMSDiscreteScheduler", {}, ("k_lms",), "Uniform"),
    Sampler("Heun", "HeunDiscreteScheduler", {}, ("k_heun",), "Uniform"),
    Sampler("DPM2", "KDPM2DiscreteScheduler", {}, ("k_dpm_2",), "Karras"),
    Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}, ("k_dpm_2_a",), "Karras"),
    Sampler("DDIM", "DDIMScheduler", {}, ("ddim",)),
    Sampler("PLMS", "PNDMScheduler", {"skip_prk_steps": True}, ("plms",)),
    Sampler("UniPC", "UniPCMultistepScheduler", {}, ("unipc",)),
    Sampler("LCM", "LCMScheduler", {}, ("lcm",)),
)

# A1111 samplers that diffusers has no scheduler for: named in errors so users know it is not a typo.
UNAVAILABLE = ("DPM fast", "DPM adaptive", "Restart", "DDIM CFG++")

_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


def _sigmas(flag: str | None) -> dict[str, bool]:
    return {f: f == flag for f in _SIGMA_FLAGS}


AUTOMATIC = "Automatic"

SCHEDULES: tuple[Schedule, ...] = (
    Schedule(AUTOMATIC, {}, ("automatic",)),
    # A1111 "Uniform"/"Normal": timesteps evenly spread over the whole training range.
    Schedule("Uniform", {"timestep_spacing": "linspace", **_sigmas(None)}, ("uniform",)),
    Schedule("Karras", _sigmas("use_karras_sigmas"), ("karras",)),
    Schedule("Exponential", _sigmas("use_exponential_sigmas"), ("exponential",)),
    Schedule("SGM Uniform", {"timestep_spacing": "trailing", **_sigmas(None)}, ("sgm_uniform", "SGMUniform")),
    Schedule("Simple", {"timestep_spacing": "trailing", **_sigmas(None)}, ("simple",)),
    Schedule("Normal", {"timestep_spacing": "linspace", **_sigmas(None)}, ("normal",)),
    Schedule("DDIM", {"timestep_spacing": "leading", "steps_offset": 1, **_sigmas(None)}, ("ddim",)),
    Schedule("Beta", _sigmas("use_beta_sigmas"), ("beta",)),
)

UNAVAILABLE_SCHEDULES = ("Polyexponential", "KL Optimal", "Align Your Steps")

_SAMPLER_INDEX = {n.lower(): s for s in SAMPLERS for n in (s.name, *s.aliases)}
_SCHEDULE_INDEX = {n.lower(): s for s in SCHEDULES for n in (s.label, *s.aliases)}


def _suggest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    close += [c for c in choices if name.lower() in c.lower() and c not in close]
    return f"; did you mean {', '.join(repr(c) for c in close[:3])}?" if close else ""


def find_schedule(label: str | None) -> Schedule:
    """The schedule type called `label` (A1111 label or alias, any case); None means Automatic."""
    if not label:
        return SCHEDULES[0]
    found = _SCHEDULE_INDEX.get(label.strip().lower())
    if found:
        return found
    labels = [s.label for s in SCHEDULES]
    if label.strip().lower() in (u.lower() for u in UNAVAILABLE_SCHEDULES):
        raise InvalidRequest(f"schedule type {label!r} has no diffusers equivalent; choose one of: {', '.join(labels)}")
    raise InvalidRequest(f"unknown schedule type {label!r}{_suggest(label, labels)} (known: {', '.join(labels)})")


def parse_sampler(name: str, schedule: str | None = None) -> tuple[Sampler, Schedule]:
    """Split an A1111 sampler name, combined or not ("DPM++ 2M Karras"), into (sampler, schedule type).

    As in A1111, a schedule named inside the sampler name wins over an explicit "Automatic"; a different explicit
    schedule wins over the one in the name.
    """
    text = (name or "").strip()
    explicit = find_schedule(schedule)
    sampler = _SAMPLER_INDEX.get(text.lower())
    if sampler is not None:
        return sampler, explicit
    for sched in SCHEDULES[1:]:
        for option in (sched.label, *sched.aliases):
            if text.lower().endswith(" " + option.lower()):
                base = _SAMPLER_INDEX.get(text[: -len(option) - 1].strip().lower())
                if base is not None:
                    return base, explicit if explicit.label != AUTOMATIC else sched
    if text.lower() in (u.lower() for u in UNAVAILABLE):
        raise InvalidRequest(f"sampler {text!r} is an A1111 sampler that diffusers has no scheduler for; "
                             f"try 'DPM++ 2M' or 'Euler a' (huabu samplers lists all)")
    names = [s.name for s in SAMPLERS]
    raise InvalidRequest(f"unknown sampler {text!r}{_suggest(text, names)} (huabu samplers lists all)")


def uses_eta_noise(name: str) -> bool:
    """Whether a sampler draws fresh noise at its steps (ancestral and SDE samplers): what A1111's eta noise seed
    delta (ENSD) reseeds."""
    sampler = parse_sampler(name)[0]
    return ("Ancestral" in sampler.scheduler or sampler.scheduler == "DPMSolverSDEScheduler"
            or "sde" in str(sampler.options.get("algorithm_type", "")))


def resolved_schedule(sampler: Sampler, schedule: Schedule, flow: bool = False) -> Schedule:
    """What "Automatic" stands for with this sampler; other schedules are returned as they are. On a flow-matching
    model (`flow`) the sampler and schedule are checked against the flow table and Automatic means "Simple"."""
    if flow:
        return _flow_schedule(sampler, schedule)
    if schedule.label == AUTOMATIC and sampler.default_schedule:
        return _SCHEDULE_INDEX[sampler.default_schedule.lower()]
    return schedule


# --- flow-matching models (SD3, FLUX) ------------------------------------------------------------------------

# A1111 sampler name -> (diffusers scheduler, config overrides) on a flow-matching model. DPM++ 2M runs diffusers'
# DPM-Solver on flow sigmas shifted as the model's own scheduler shifts them (flow_shift; FLUX's resolution-dependent
# shift arrives from the pipeline as `mu`). "Euler a" is the stochastic flow Euler, which diffusers' flow pipelines
# step without the call's generator: the engine seeds torch's global one around each call
# (huabu.engine.noise.seeded_global_rng).
FLOW_SAMPLERS: Mapping[str, tuple[str, Mapping[str, Any]]] = {
    "Euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "Euler a": ("FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True}),
    "DPM++ 2M": (_DPM, {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_flow_sigmas": True,
                        "prediction_type": "flow_prediction", "final_sigmas_type": "zero"}),
}
# Schedule types on flow models, per sampler: "Simple" is the model's own (shifted linear) sigmas.
FLOW_AUTOMATIC = "Simple"
_EULER_SCHEDULES = ("Simple", "Karras", "Exponential", "Beta")
_FLOW_SCHEDULES = {"Euler": _EULER_SCHEDULES, "Euler a": _EULER_SCHEDULES, "DPM++ 2M": ("Simple",)}


def is_flow_config(config: Mapping[str, Any]) -> bool:
    """Whether a diffusers scheduler config is a flow-matching one (SD3, FLUX and other rectified-flow models)."""
    return (str(config.get("_class_name", "")).startswith("FlowMatch") or bool(config.get("use_flow_sigmas"))
            or config.get("prediction_type") == "flow_prediction")


def _flow_schedule(sampler: Sampler, schedule: Schedule) -> Schedule:
    if sampler.name not in FLOW_SAMPLERS:
        raise InvalidRequest(f"sampler {sampler.name!r} cannot run on a flow-matching model (SD3, FLUX); use "
                             f"{' or '.join(repr(name) for name in FLOW_SAMPLERS)}")
    if schedule.label == AUTOMATIC:
        return _SCHEDULE_INDEX[FLOW_AUTOMATIC.lower()]
    allowed = _FLOW_SCHEDULES[sampler.name]
    if schedule.label not in allowed:
        raise InvalidRequest(f"schedule type {schedule.label!r} is not available with {sampler.name!r} on a "
                             f"flow-matching model; use {', '.join(allowed)}")
    return schedule


def _flow_scheduler_config(sampler: Sampler, schedule: Schedule, base: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    class_name, options = FLOW_SAMPLERS[sampler.name]
    config = {**base, **options}
    if schedule.label != FLOW_AUTOMATIC:
        config.update(schedule.options)
    if options.get("use_flow_sigmas"):
        config["flow_shift"] = float(base.get("shift", base.get("flow_shift", 1.0)))
        config["use_dynamic_shifting"] = bool(base.get("use_dynamic_shifting", False))
    return class_name, config


def canonical_names(name: str, schedule: str | None = None) -> tuple[str, str]:
    """(sampler name, schedule label) as written into infotexts: the schedule is resolved, as A1111 1.10 does."""
    sampler, sched = parse_sampler(name, schedule)
    return sampler.name, resolved_schedule(sampler, sched).label


def scheduler_config(
    name: str, schedule: str | None, base_config: Mapping[str, Any], seeds: Sequence[int] | None = None,
    shift: float | None = None,
) -> tuple[str, dict[str, Any]]:
    """(diffusers scheduler class name, config) for an A1111 sampler on a model whose scheduler config is
    `base_config`. `seeds` (one per image) seed DPM++ SDE's Brownian noise so batches reproduce single images;
    `shift` replaces a flow-matching model's own sigma shift (and FLUX's size-dependent one)."""
    sampler, sched = parse_sampler(name, schedule)
    flow = is_flow_config(base_config)
    sched = resolved_schedule(sampler, sched, flow)
    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    if shift is not None and not flow:
        raise InvalidRequest(f"shift {shift:g} applies to flow-matching models (SD3, FLUX) only; this model's "
                             f"scheduler ({base_config.get('_class_name', 'unnamed')}) is not one")
    if flow:
        if shift is not None and config.get("use_dynamic_shifting"):
            # FLUX's pipelines pass a size-dependent mu (the log of the shift) between base_shift and max_shift;
            # both ends at log(shift) pin it: each sigma t then becomes shift * t / (1 + (shift - 1) * t).
            config.update(base_shift=math.log(shift), max_shift=math.log(shift))
        elif shift is not None:
            config["shift"] = float(shift)
        return _flow_scheduler_config(sampler, sched, config)
    config.update(sampler.options)
    config.update(sched.options)
    if sampler.scheduler == "DPMSolverSDEScheduler" and seeds is not None:
        config["noise_sampler_seed"] = [int(s) for s in seeds]
    return sampler.scheduler, config


def list_samplers() -> list[dict[str, Any]]:
    """A1111 `/sdapi/v1/samplers`-shaped rows: name, aliases, options."""
    return [
        {"name": s.name, "aliases": list(s.aliases), "options": {
            "scheduler": s.scheduler, "default schedule": s.default_schedule or "model's own", **(
                {"note": s.note} if s.note else {})}}
        for s in SAMPLERS
    ]


def list_schedules() -> list[dict[str, Any]]:
    """A1111 `/sdapi/v1/schedulers`-shaped rows: name, label, aliases."""
    return [{"name": s.aliases[0], "label": s.label, "aliases": list(s.aliases[1:]) or None} for s in SCHEDULES]
