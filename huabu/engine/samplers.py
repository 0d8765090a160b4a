"""Build the diffusers scheduler an A1111 sampler name and schedule type stand for (the names: huabu.core.samplers)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from huabu.core.errors import InvalidRequest
from huabu.core.samplers import FLOW_AUTOMATIC, is_flow_config, parse_sampler, resolved_schedule, scheduler_config


def build_scheduler(name: str, schedule: str | None, base_config: Mapping[str, Any],
                    seeds: Sequence[int] | None = None, shift: float | None = None):
    """A fresh diffusers scheduler for this sampler and schedule, built from the model's scheduler config (its
    sigma shift replaced by `shift` on a flow-matching model)."""
    import inspect

    import diffusers

    class_name, config = scheduler_config(name, schedule, base_config, seeds, shift)
    cls = getattr(diffusers, class_name)
    sampler, sched = parse_sampler(name, schedule)
    flow = is_flow_config(base_config)
    sched = resolved_schedule(sampler, sched, flow)
    # from_config keeps options the class does not take as hidden config, so ask the constructor itself.
    accepted = inspect.signature(cls.__init__).parameters
    options = {} if flow and sched.label == FLOW_AUTOMATIC else sched.options  # flow "Simple": the model's own
    unsupported = [k for k, v in options.items() if v and k not in accepted]
    if unsupported:
        raise InvalidRequest(f"schedule type {sched.label!r} is not available with sampler {sampler.name!r} "
                             f"(diffusers' {class_name} has no {unsupported[0]}); pick another schedule type")
    return cls.from_config(config)
