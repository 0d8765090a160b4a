"""huabu.training.checkpoint: pickle-free checkpoints written whole or not at all, pruned to the newest few."""

from __future__ import annotations

import torch

from huabu.training.checkpoint import list_checkpoints, load_latest, save_checkpoint


def _model(seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 2)


def test_checkpoints_round_trip_prune_and_ignore_a_killed_write(tmp_path):
    folder = tmp_path / "checkpoints"
    model = _model(0)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    for step in (1, 2, 3):
        save_checkpoint(folder, step, {"model": model}, {"opt": opt}, extra={"seen": step * 10})
    assert [p.name for p in list_checkpoints(folder)] == ["step-0000002", "step-0000003"]  # keep=2

    (folder / ".step-0000004.partial").mkdir()  # what a write killed half-way leaves
    (folder / ".step-0000004.partial" / "model.safetensors").write_bytes(b"half")
    restored = _model(1)
    restored_opt = torch.optim.AdamW(restored.parameters(), lr=0.1)
    state = load_latest(folder, {"model": restored}, {"opt": restored_opt})
    assert state == {"step": 3, "extra": {"seen": 30}}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), restored.state_dict().values()))
    assert torch.equal(restored_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])

    save_checkpoint(folder, 4, {"model": model}, {"opt": opt})  # the next write clears the leftover
    assert sorted(p.name for p in folder.iterdir()) == ["step-0000003", "step-0000004"]
