"""huabu.training.loop on a toy recipe: exact resume after a kill or a cancel, the same-run check (also against
checkpoints written before the loop), log.jsonl closed and holding throughput, checkpoints and samples on the main
process only, and one lr_at that reproduces each recipe's former schedule exactly."""

from __future__ import annotations

import builtins
import json
import math
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from training_support import Killed, assert_same, kill_after, newest_weights

from huabu.core.errors import InvalidRequest
from huabu.training import loop
from huabu.training.checkpoint import list_checkpoints, save_checkpoint
from huabu.training.loop import Plan, Recipe, Sampled
from huabu.training.schedules import Schedule, lr_at


def toy(accelerator: Accelerator | None = None, samples: list[int] | None = None) -> Recipe:
    """A linear model learning a sum; each step's batch is a function of the step, as in every huabu recipe."""
    accelerator = accelerator or Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW([{"params": [model.weight]}, {"params": [model.bias], "lr": 0.01}], lr=0.1)
    prepared, opt = accelerator.prepare(model, opt)

    def step(step: int):
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(step))
        return ((prepared(x) - x.sum(dim=1, keepdim=True)) ** 2).mean(), {"x_mean": x.mean()}

    def sample(done: int) -> Sampled:
        samples.append(done)
        return Sampled(scores={"weight_norm": float(model.weight.detach().norm())})

    return Recipe(accelerator, opt, {"model": model}, step, list(model.parameters()),
                  sample=sample if samples is not None else None)


def plan(folder: Path, **changes) -> Plan:
    fields = dict(folder=folder, steps=6, schedule=Schedule("cosine", warmup=2, length=6, floor=0.1),
                  same_run={"width": 4, "channels": (1, 2)}, items_per_step=8, checkpoint_every=2,
                  config={"width": 4, "channels": [1, 2], "steps": 6})
    return Plan(**{**fields, **changes})


def test_a_killed_run_resumes_to_the_weights_of_a_straight_one(tmp_path, monkeypatch):
    assert loop.train(toy(), plan(tmp_path / "straight")) == 6
    with monkeypatch.context() as m:
        kill_after(m, 4)
        with pytest.raises(Killed):
            loop.train(toy(), plan(tmp_path / "killed"))
    assert [p.name for p in list_checkpoints(tmp_path / "killed" / "checkpoints")] == ["step-0000002", "step-0000004"]
    assert loop.train(toy(), plan(tmp_path / "killed")) == 6
    assert_same(newest_weights(tmp_path / "straight", "model"), newest_weights(tmp_path / "killed", "model"))
    assert_same(newest_weights(tmp_path / "straight", "optim-opt"), newest_weights(tmp_path / "killed", "optim-opt"))
    assert json.loads((tmp_path / "killed" / "config.json").read_text())["channels"] == [1, 2]


def test_a_resumed_run_must_be_the_same_run(tmp_path):
    loop.train(toy(), plan(tmp_path, steps=2))
    refused = r"holds a run made with channels = \[1, 2\], this run has \[1, 3\]"
    with pytest.raises(InvalidRequest, match=refused) as err:
        loop.train(toy(), plan(tmp_path, same_run={"width": 4, "channels": (1, 3)}))
    assert "\n" not in str(err.value)
    assert loop.train(toy(), plan(tmp_path, steps=4)) == 4  # how long a run is may change


def test_a_checkpoint_from_before_the_loop_resumes_or_is_refused_by_its_config_json(tmp_path):
    """huabu-tiny's stages wrote config.json and checkpoints without the run's settings in them."""
    straight = tmp_path / "straight"
    loop.train(toy(), plan(straight))
    for name in ("old", "other"):
        recipe = toy()
        loop.train(recipe, plan(tmp_path / name, steps=2))
        save_checkpoint(tmp_path / name / "checkpoints", 2, recipe.checkpointed, {"opt": recipe.optimizer})
        state = json.loads((tmp_path / name / "checkpoints" / "step-0000002" / "state.json").read_text())
        assert state["extra"] == {}  # the layout of a checkpoint written before the loop
    loop.train(toy(), plan(tmp_path / "old"))
    assert_same(newest_weights(straight, "model"), newest_weights(tmp_path / "old", "model"))

    (tmp_path / "other" / "config.json").write_text(json.dumps({"width": 5, "channels": [1, 2], "steps": 6}))
    with pytest.raises(InvalidRequest, match="holds a run made with width = 5, this run has 4"):
        loop.train(toy(), plan(tmp_path / "other"))


def test_cancel_stops_at_a_step_and_leaves_a_checkpoint_to_resume_from(tmp_path):
    seen = []

    def progress(p: loop.TrainProgress) -> None:
        seen.append((p.step, p.steps, p.checkpoint.name if p.checkpoint else None))

    done = loop.train(toy(), plan(tmp_path / "cancelled", checkpoint_every=100), progress,
                      cancel=lambda: len(seen) == 3)
    assert done == 3 and seen == [(1, 6, None), (2, 6, None), (3, 6, None)]
    assert [p.name for p in list_checkpoints(tmp_path / "cancelled" / "checkpoints")] == ["step-0000003"]
    loop.train(toy(), plan(tmp_path / "cancelled", checkpoint_every=100), progress)
    assert seen[3:] == [(4, 6, None), (5, 6, None), (6, 6, "step-0000006")]
    loop.train(toy(), plan(tmp_path / "straight"))
    assert_same(newest_weights(tmp_path / "straight", "model"), newest_weights(tmp_path / "cancelled", "model"))


def test_log_jsonl_is_closed_and_holds_loss_values_throughput_and_scores(tmp_path, monkeypatch):
    opened = []

    def tracked_open(*args, **kwargs):
        opened.append(builtins.open(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(loop, "open", tracked_open, raising=False)
    samples: list[int] = []
    loop.train(toy(samples=samples), plan(tmp_path, log_every=4, sample_every=3, unit="clips"))
    with monkeypatch.context() as m:  # a run that dies closes its log too
        kill_after(m, 8)
        with pytest.raises(Killed):
            loop.train(toy(), plan(tmp_path, steps=9, log_every=4, unit="clips"))
    assert len(opened) == 2 and all(f.closed for f in opened)
    assert samples == [3, 6]
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [line for line in lines if "loss" in line]
    assert [line["step"] for line in losses] == [4, 6, 8]  # every log_every steps and the last
    assert all(line["clips_per_s"] > 0 and line["seconds_per_step"] > 0 and "x_mean" in line for line in losses)
    assert [line["step"] for line in lines if "weight_norm" in line] == [3, 6]


def test_checkpoints_config_and_samples_are_written_by_the_main_process_only(tmp_path):
    class OtherProcess(Accelerator):
        is_main_process = False

    samples: list[int] = []
    assert loop.train(toy(OtherProcess(cpu=True), samples), plan(tmp_path, sample_every=2)) == 6
    assert not list_checkpoints(tmp_path / "checkpoints") and not (tmp_path / "config.json").exists()
    assert samples == [] and not (tmp_path / "log.jsonl").exists()


def test_one_lr_at_gives_each_recipe_its_former_schedule_exactly():
    """The formulas each recipe had before the loop, copied verbatim."""
    lr, warmup, steps = 5e-4, 7, 40

    def unet_motion_lora(step):  # tiny/train_unet.lr_at (motion used it too); LoRA: lr * min(1, (step + 1) / warmup)
        return lr * min(1.0, (step + 1) / warmup)

    def vae(step):
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    def clip_controlnet(step):
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    every = range(steps + 5)
    assert [lr_at(s, lr, Schedule("constant", warmup)) for s in every] == [unet_motion_lora(s) for s in every]
    assert [lr_at(s, lr, Schedule("constant", 0)) for s in every] == [lr] * len(every)
    assert [lr_at(s, lr, Schedule("cosine", warmup, steps, 0.05)) for s in every] == [vae(s) for s in every]
    assert [lr_at(s, lr, Schedule("cosine", warmup, steps, 0.1)) for s in every] == [clip_controlnet(s) for s in every]
    with pytest.raises(InvalidRequest, match="schedule must be one of constant, cosine, got 'linear'"):
        Schedule("linear", 0)
