"""Adam stepped inside backward (`concept_edit.step_in_backward`) is the standard loop's update, bit for bit on
the CPU, with the same optimiser state; Selective Amnesia's `--step-in-backward` gives the same edit, resumes a
checkpoint of the standard way, and leaves no hook behind."""

import os
import signal

import pytest
import torch

from concept_edit import EditRequest, fit, make_config, make_inputs
from concept_edit.methods.amnesia.backends import TextToImage
from concept_edit.step_in_backward import StepInBackward
from concept_edit.training import Interrupted

FAST = {"steps": 3, "lr": 1e-3, "batch_size": 2, "fisher_samples": 2, "fisher_timesteps": 4, "replay_samples": 3,
        "surrogate_samples": 2, "sampling_steps": 2, "surrogate": "uniform"}  # fmt: skip
REQUEST = EditRequest(concepts=("cat",), preserve=("a dog", "a house"))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 8)
        self.b = torch.nn.Linear(8, 2)
        self.unused = torch.nn.Parameter(torch.ones(3))  # gets no gradient: stepped only through `before`

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def nets():
    torch.manual_seed(0)
    first = Net()
    second = Net()
    second.load_state_dict(first.state_dict())
    return first, second


def pull(params):
    """A term outside the autograd graph (as EWC's): grad += 0.1 * p (a missing gradient counts as zero)."""

    def add(index, p):
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.add_(p.detach(), alpha=0.1)

    return add


@pytest.mark.parametrize("with_before", [True, False])
def test_stepping_inside_backward_equals_the_standard_step(with_before):
    standard, inside = nets()
    params = list(standard.parameters())
    before = pull(params)
    optimizer = torch.optim.Adam(params, lr=1e-2)
    fused = StepInBackward(list(inside.parameters()), lambda one: torch.optim.Adam(one, lr=1e-2),
                           before if with_before else None)  # fmt: skip
    for step in range(4):
        x = torch.randn(5, 4, generator=torch.Generator().manual_seed(step))
        optimizer.zero_grad(set_to_none=True)
        standard(x).square().mean().backward()
        if with_before:
            for index, p in enumerate(params):
                before(index, p)
        optimizer.step()
        fused.zero_grad()
        inside(x).square().mean().backward()
        fused.finish()
        assert all(p.grad is None for p in inside.parameters())  # no gradient outlives its step
    for a, b in zip(standard.parameters(), inside.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    moved = inside.unused.detach()
    assert (moved != 1).all() if with_before else (moved == 1).all()  # stepped only when `before` gives it a gradient
    ours, theirs = fused.state_dict(), optimizer.state_dict()
    assert ours["param_groups"] == theirs["param_groups"] and ours["state"].keys() == theirs["state"].keys()
    for key, state in theirs["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(ours["state"][key][name], value, atol=0, rtol=0)
    # either state loads into the other form, and the next steps agree
    fresh = torch.optim.Adam(params, lr=1e-2)
    fresh.load_state_dict(ours)
    fused.load_state_dict(theirs)
    with pytest.raises(ValueError, match="not of these 3 parameters"):
        StepInBackward(params[:3], lambda one: torch.optim.Adam(one)).load_state_dict(theirs)
    fused.close()
    inside(torch.randn(2, 4)).sum().backward()  # the hooks are gone: a later backward keeps its gradients
    assert all(p.grad is not None for p in (inside.a.weight, inside.b.bias))


def test_amnesia_step_in_backward_gives_the_same_edit_and_no_hook_stays(sd):
    standard = fit(sd, "amnesia", REQUEST, make_config("amnesia", **FAST), seed=2, progress=False)
    inside = fit(sd, "amnesia", REQUEST, make_config("amnesia", **FAST, step_in_backward=True), seed=2, progress=False)
    assert inside.manifest["stats"] == standard.manifest["stats"]
    for a, b in zip(standard.changes(), inside.changes(), strict=True):
        torch.testing.assert_close(a.delta, b.delta, atol=0, rtol=0)
    before = {n: p.detach().clone() for n, p in sd.unet.named_parameters()}
    sd.unet.requires_grad_(True)
    x = torch.randn(1, sd.unet.config.in_channels, 8, 8)
    text = torch.randn(1, 3, sd.unet.config.cross_attention_dim)
    sd.unet(x, 10, encoder_hidden_states=text).sample.sum().backward()
    assert all(p.grad is not None for p in sd.unet.parameters() if p.requires_grad)  # no stepping hook left
    assert all(torch.equal(before[n], p) for n, p in sd.unet.named_parameters())
    sd.unet.requires_grad_(False).zero_grad(set_to_none=True)


def test_a_standard_checkpoint_resumes_stepping_inside_backward(sd, tmp_path, monkeypatch):
    cfg = {**FAST, "steps": 4}
    whole = fit(sd, "amnesia", REQUEST, make_config("amnesia", **cfg), seed=3, progress=False)
    ckpt = tmp_path / "run.ckpt"
    calls = {"n": 0}
    real_loss = TextToImage.loss

    def loss_then_ctrl_c(self, x, rows, t, noise):
        if len(x) == 2 * FAST["batch_size"]:  # a training step (forget + replay rows)
            calls["n"] += 1
            if calls["n"] == 2:
                os.kill(os.getpid(), signal.SIGINT)
        return real_loss(self, x, rows, t, noise)

    monkeypatch.setattr(TextToImage, "loss", loss_then_ctrl_c)
    with pytest.raises(Interrupted):
        fit(sd, "amnesia", REQUEST, make_config("amnesia", **cfg), make_inputs("amnesia", checkpoint=ckpt), seed=3,
            progress=False)  # fmt: skip
    monkeypatch.setattr(TextToImage, "loss", real_loss)
    inputs = make_inputs("amnesia", checkpoint=ckpt, resume=True)
    resumed = fit(sd, "amnesia", REQUEST, make_config("amnesia", **cfg, step_in_backward=True), inputs, seed=3,
                  progress=False)  # fmt: skip
    assert resumed.manifest["stats"] == whole.manifest["stats"]
    for a, b in zip(whole.changes(), resumed.changes(), strict=True):
        torch.testing.assert_close(a.delta, b.delta, atol=0, rtol=0)
