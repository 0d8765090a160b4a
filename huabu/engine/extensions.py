"""Extensions: what joins a denoising run without forking it (after InvokeAI's extensions, in small).

An extension may change the latents after each step (`on_step_end`, chained by huabu.engine.job.step_callback) and
adds its infotext fields. Its pipeline arguments come from its own methods, since each kind needs different ones:
ControlNet (huabu.engine.controlnets.ControlPlan), IP-Adapter image prompts (huabu.engine.ip_adapters.IPAdapterPlan),
the prompt schedule (below), and for video the motion module, SparseCtrl and first-frame anchoring
(huabu.engine.video).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from huabu.engine.prompts.encode import ScheduledConditioning


class Extension:
    """Something that joins a denoising run without forking it, after InvokeAI's extensions: it may change the
    latents after each step and adds its infotext fields. Pipeline arguments come from the extension's own
    methods, since each kind needs different ones."""

    tensor_inputs: tuple[str, ...] = ()  # callback tensors it reads besides the latents

    @property
    def acts_per_step(self) -> bool:
        return False

    def on_step_end(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        return callback_kwargs

    def infotext_params(self) -> dict[str, Any]:
        return {}


class PromptSchedule(Extension):
    """A1111's prompt editing and alternation: the conditioning changes at the steps the prompt names."""

    def __init__(self, conditioning: ScheduledConditioning) -> None:
        self.conditioning = conditioning
        self.tensor_inputs = tuple(conditioning.callback_tensor_inputs)

    @property
    def acts_per_step(self) -> bool:
        return is_scheduled(self.conditioning)

    def on_step_end(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        return self.conditioning.step_callback(pipe, step, timestep, callback_kwargs)


def is_scheduled(conditioning: ScheduledConditioning) -> bool:
    return len(conditioning.positive) > 1 or len(conditioning.negative) > 1
