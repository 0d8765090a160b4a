"""huabu's one training loop. Every recipe (huabu-tiny's CLIP, VAE and UNet, LoRA, ControlNet, motion modules) is a
setup that builds a `Recipe` (models, optimizer, the loss of a step) and a `Plan` (how long, where, how often); this
loop does the rest, the same way for all of them.

Recipes draw each step's batch and noise from (seed, step), and checkpoints (huabu.training.checkpoint) hold the
modules and the optimizer, so a run killed after a checkpoint resumes to exactly the weights of an uninterrupted one.
A resumed run must be the same run: the plan's `same_run` values are kept in every checkpoint and compared first.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from huabu.core.atomic import atomic_path
from huabu.core.errors import InvalidRequest
from huabu.training.checkpoint import checkpoint_state, list_checkpoints, load_checkpoint, save_checkpoint
from huabu.training.schedules import Schedule, lr_at

log = logging.getLogger(__name__)

# Config fields that only say where, how long and how often: a resumed run may change them (a UNet run with a
# constant learning rate can be lengthened after the fact).
MAY_CHANGE = ("out", "steps", "stop_after", "checkpoint_every", "sample_every", "eval_every", "samples",
              "sample_steps", "sample_cfg")

# What a step returns: the loss, or the loss and other values for log.jsonl (tensors or numbers).
StepOutput = torch.Tensor | tuple[torch.Tensor, dict[str, Any]]


@dataclass
class Sampled:
    """What a sampling or evaluation pass made: files, and scores for log.jsonl."""

    paths: tuple[Path, ...] = ()
    scores: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recipe:
    """What a recipe's setup builds for the loop (its modules already passed through `accelerator.prepare`)."""

    accelerator: Any  # accelerate.Accelerator
    optimizer: torch.optim.Optimizer  # each param group's lr is its peak rate; the plan's schedule scales it
    checkpointed: dict[str, torch.nn.Module]  # saved in every checkpoint, restored on resume (unwrapped modules)
    step: Callable[[int], StepOutput]  # the loss of step `step` (0-based), on that step's batch
    clipped: list[torch.nn.Parameter]  # gradients clipped together to the plan's max_grad_norm
    after_step: Callable[[int], None] | None = None  # after each optimizer step (an EMA update)
    sample: Callable[[int], Sampled] | None = None  # samples or an evaluation after `done` steps, main process only


@dataclass
class Plan:
    """How the loop runs a recipe."""

    folder: Path  # run folder: log.jsonl, checkpoints/ and (when `config` is given) config.json
    steps: int  # the loop stops after this step
    schedule: Schedule
    same_run: dict[str, Any]  # what a resumed run must match (JSON values), kept in every checkpoint
    items_per_step: int  # images or clips per step, all processes together: for throughput
    checkpoint_every: int  # and after the last step
    sample_every: int = 0  # and after the last step; 0 = never
    log_every: int = 1  # log.jsonl lines, and after the last step
    unit: str = "images"  # what items_per_step counts: log.jsonl says `<unit>_per_s`
    max_grad_norm: float = 1.0
    config: dict | None = None  # written to config.json, for people and for resuming checkpoints older than same_run
    resume: bool = True  # continue from the newest checkpoint in folder/checkpoints
    desc: str = "train"  # the progress bar's label


@dataclass(frozen=True)
class TrainProgress:
    """Reported after every step."""

    step: int  # steps done
    steps: int
    loss: float
    seconds_per_step: float
    checkpoint: Path | None = None  # written at this step
    samples: tuple[Path, ...] = ()  # written at this step


def same_run(config: Any) -> dict[str, Any]:
    """The fields of a dataclass config that a resumed run must match: all but MAY_CHANGE."""
    return {key: value for key, value in asdict(config).items() if key not in MAY_CHANGE}


def train(recipe: Recipe, plan: Plan, progress: Callable[[TrainProgress], None] | None = None,
          cancel: Callable[[], bool] | None = None) -> int:
    """Run `recipe` from its newest checkpoint (or step 0) to `plan.steps`; returns the steps done. When `cancel()`
    turns true the loop stops before the next step and leaves a checkpoint that a later run resumes from."""
    accelerator, optimizer = recipe.accelerator, recipe.optimizer
    folder = Path(plan.folder)
    same_run = json.loads(json.dumps(plan.same_run))  # as a checkpoint reads it back: tuples become lists
    peak_lrs = [group["lr"] for group in optimizer.param_groups]  # before a checkpoint's rates replace them
    start = resume(recipe, plan, same_run) if plan.resume else 0
    folder.mkdir(parents=True, exist_ok=True)
    if plan.config is not None and accelerator.is_main_process:
        with atomic_path(folder / "config.json") as tmp:
            tmp.write_text(json.dumps(plan.config, indent=1))
    done = saved = start
    window = (time.perf_counter(), start)  # throughput is measured over the steps since the last log line
    log_path = folder / "log.jsonl" if accelerator.is_main_process else os.devnull
    with open(log_path, "a", encoding="utf-8") as log_file, \
            tqdm(range(start, plan.steps), initial=start, total=plan.steps, desc=plan.desc, unit="step",
                 disable=not accelerator.is_main_process) as bar:
        for step in bar:
            if cancel is not None and cancel():
                if saved != done:
                    checkpoint(recipe, plan, done)
                log.info("stopped at step %d of %d; running it again resumes", done, plan.steps)
                break
            tick = time.perf_counter()
            lrs = [lr_at(step, peak, plan.schedule) for peak in peak_lrs]
            loss, values = optimizer_step(recipe, step, lrs, plan.max_grad_norm)
            done, seconds, loss_value = step + 1, time.perf_counter() - tick, loss.item()
            bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)

            if done % plan.log_every == 0 or done == plan.steps:
                elapsed, steps = time.perf_counter() - window[0], done - window[1]
                record = {"step": done, "loss": loss_value, **{k: float(v) for k, v in values.items()},
                          "seconds_per_step": elapsed / steps,
                          f"{plan.unit}_per_s": plan.items_per_step * steps / elapsed}
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                window = (time.perf_counter(), done)
            written = None
            if done % plan.checkpoint_every == 0 or done == plan.steps:
                written, saved = checkpoint(recipe, plan, done), done
            sampled = Sampled()
            if (recipe.sample is not None and plan.sample_every and accelerator.is_main_process
                    and (done % plan.sample_every == 0 or done == plan.steps)):
                sampled = recipe.sample(done)
                if sampled.scores:
                    log_file.write(json.dumps({"step": done, **sampled.scores}) + "\n")
                    log_file.flush()
                    bar.write(f"step {done}: " + json.dumps(sampled.scores))
            if progress is not None:
                progress(TrainProgress(done, plan.steps, loss_value, seconds, written, sampled.paths))
    return done


def optimizer_step(recipe: Recipe, step: int, lrs: list[float], max_grad_norm: float
                   ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Step `step` of `recipe` at learning rates `lrs` (one per param group): loss, backward, clipped gradients,
    update. Returns the loss and the step's other values."""
    accelerator, optimizer = recipe.accelerator, recipe.optimizer
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    with accelerator.autocast():
        output = recipe.step(step)
    loss, values = output if isinstance(output, tuple) else (output, {})
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(recipe.clipped, max_grad_norm)
    optimizer.step()
    if recipe.after_step is not None:
        recipe.after_step(step)
    return loss.detach(), values


def checkpoint(recipe: Recipe, plan: Plan, done: int) -> Path | None:
    """Write the checkpoint of step `done` on the main process (the others wait); returns it there."""
    accelerator = recipe.accelerator
    path = None
    if accelerator.is_main_process:
        scaler = accelerator.scaler
        extra = {"run": plan.same_run, "scaler": scaler.state_dict() if scaler is not None else None}
        path = save_checkpoint(Path(plan.folder) / "checkpoints", done, recipe.checkpointed,
                               {"opt": recipe.optimizer}, extra)
    accelerator.wait_for_everyone()
    return path


def resume(recipe: Recipe, plan: Plan, same_run: dict[str, Any]) -> int:
    """Load the newest checkpoint of the run folder, once it proves to be the same run; returns the next step."""
    found = list_checkpoints(Path(plan.folder) / "checkpoints")
    if not found:
        return 0
    state = checkpoint_state(found[-1])
    saved = state["extra"].get("run")
    if saved is None:  # checkpoints written before the loop kept this: the run folder's config.json has it
        config = Path(plan.folder) / "config.json"
        saved = json.loads(config.read_text()) if config.is_file() else {}
    for key, value in same_run.items():
        if key in saved and saved[key] != value:
            raise InvalidRequest(f"{plan.folder} holds a run made with {key} = {saved[key]!r}, this run has "
                                 f"{value!r}: resume with the same settings, or start over in another folder")
    load_checkpoint(found[-1], recipe.checkpointed, {"opt": recipe.optimizer})
    scaler = recipe.accelerator.scaler
    if state["extra"].get("scaler") and scaler is not None:
        scaler.load_state_dict(state["extra"]["scaler"])
    log.info("resuming %s from step %d", plan.folder, state["step"])
    return int(state["step"])
