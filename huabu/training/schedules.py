"""Learning-rate schedules, named in each recipe's config: linear warm-up, then constant or cosine to a floor.

One formula rather than torch's or diffusers' schedulers: theirs warm up from `step / warmup` (0 at the first step)
and multiply in another order, and every shipped huabu model was trained with exactly these numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from huabu.core.errors import InvalidRequest

SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class Schedule:
    name: str  # "constant" after warm-up, or "cosine" from the peak down to `floor` x the peak at `length`
    warmup: int  # steps of linear warm-up; 0 = none
    length: int = 0  # steps of the whole schedule (cosine only)
    floor: float = 0.0  # cosine's last learning rate, as a share of the peak

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise InvalidRequest(f"learning-rate schedule must be one of {', '.join(SCHEDULES)}, got {self.name!r}")


def lr_at(step: int, lr: float, schedule: Schedule) -> float:
    """The learning rate of `step` (0-based) for a peak rate `lr`."""
    if schedule.name == "constant":
        # With EMA weights or a LoRA, a run stopped at step N is exactly the run configured for N steps.
        return lr if schedule.warmup <= 0 else lr * min(1.0, (step + 1) / schedule.warmup)
    if step < schedule.warmup:
        return lr * (step + 1) / schedule.warmup
    progress = (step - schedule.warmup) / max(1, schedule.length - schedule.warmup)
    return lr * (schedule.floor + (1 - schedule.floor) * 0.5 * (1 + math.cos(math.pi * progress)))
