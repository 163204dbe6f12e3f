"""Long work: checkpoints without pickle, Ctrl-C deferred to a checkpoint, resume reproduces the uninterrupted run."""

import os
import signal

import pytest
import torch

from concept_edit.io import load_tree, save_tree
from concept_edit.training import Interrupted, run_steps, save_checkpoint, step_generator
from concept_edit.training import resume as resume_from


def test_tree_roundtrip_keeps_int_keys_lists_and_tensors(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    tree = {"optimizer": opt.state_dict(), "step": 5, "nested": [torch.arange(3), {"x": None}]}
    save_tree(tmp_path / "t.safetensors", tree)
    back = load_tree(tmp_path / "t.safetensors")
    assert back["step"] == 5 and back["nested"][1] == {"x": None}
    assert torch.equal(back["nested"][0], torch.arange(3))
    assert set(back["optimizer"]["state"]) == {0, 1}  # integer keys survive
    fresh = torch.optim.AdamW(model.parameters())
    fresh.load_state_dict(back["optimizer"])
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def _toy_run(ckpt, total, interrupt_at=None, resume=False):
    """A tiny regression trained with per-step randomness derived from (seed, step)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    config = {"total": total}
    start = resume_from(ckpt, config, model=model, optimizer=opt) if resume else 0

    def step_fn(step):
        if step == interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step; the loop must finish the step first
        x = torch.randn(8, 4, generator=step_generator(1, step))
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    def save_fn(step):
        save_checkpoint(ckpt, step, config, model=model.state_dict(), optimizer=opt.state_dict())

    run_steps(total=total, start=start, step_fn=step_fn, save_fn=save_fn, every=100, desc="toy")
    return model.weight.detach().clone()


def test_interrupt_checkpoints_and_resume_matches_uninterrupted(tmp_path):
    uninterrupted = _toy_run(tmp_path / "a.safetensors", total=10)
    with pytest.raises(Interrupted, match="--resume"):
        _toy_run(tmp_path / "b.safetensors", total=10, interrupt_at=4)
    assert load_tree(tmp_path / "b.safetensors")["step"] == 5
    resumed = _toy_run(tmp_path / "b.safetensors", total=10, resume=True)
    assert torch.equal(resumed, uninterrupted)


def test_resume_with_other_options_is_refused(tmp_path):
    _toy_run(tmp_path / "c.safetensors", total=3)
    with pytest.raises(ValueError, match="different configuration"):
        _toy_run(tmp_path / "c.safetensors", total=4, resume=True)
