"""Adam stepped inside backward (`concept_edit.step_in_backward`) is the standard loop's update, bit for bit on
the CPU, with the same optimiser state; Selective Amnesia's `--step-in-backward` gives the same edit, resumes a
checkpoint of the standard way, and leaves no hook behind."""

import copy

import pytest
import torch
from test_amnesia import interrupt_fit

from concept_edit import EditRequest, fit, make_config, make_inputs
from concept_edit.methods.amnesia import fit as amnesia_fit
from concept_edit.step_in_backward import StepInBackward

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


def pull(index, p):
    """A term outside the autograd graph (as EWC's): grad += 0.1 * p (a missing gradient counts as zero)."""
    if p.grad is None:
        p.grad = torch.zeros_like(p)
    p.grad.add_(p.detach(), alpha=0.1)


def standard_step(net, optimizer, x, before):
    optimizer.zero_grad(set_to_none=True)
    net(x).square().mean().backward()
    if before is not None:
        for index, p in enumerate(net.parameters()):
            before(index, p)
    optimizer.step()


def inside_step(net, fused, x):
    fused.zero_grad()
    net(x).square().mean().backward()
    fused.finish()


def batch(step):
    return torch.randn(5, 4, generator=torch.Generator().manual_seed(step))


def assert_same(a, b):
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(x, y, atol=0, rtol=0)


def assert_no_stepping_hook(pipe):
    """A backward through the UNet keeps its gradients and changes no weight: no stepping hook was left."""
    before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    pipe.unet.requires_grad_(True)
    x = torch.randn(1, pipe.unet.config.in_channels, 8, 8)
    text = torch.randn(1, 3, pipe.unet.config.cross_attention_dim)
    pipe.unet(x, 10, encoder_hidden_states=text).sample.sum().backward()
    assert all(p.grad is not None for p in pipe.unet.parameters())
    assert all(torch.equal(before[n], p) for n, p in pipe.unet.named_parameters())
    pipe.unet.requires_grad_(False).zero_grad(set_to_none=True)


@pytest.mark.parametrize("with_before", [True, False])
def test_stepping_inside_backward_equals_the_standard_step(with_before):
    standard, inside = nets()
    before = pull if with_before else None
    optimizer = torch.optim.Adam(standard.parameters(), lr=1e-2)
    fused = StepInBackward(list(inside.parameters()), lambda one: torch.optim.Adam(one, lr=1e-2), before)
    for step in range(4):
        standard_step(standard, optimizer, batch(step), before)
        inside_step(inside, fused, batch(step))
        assert all(p.grad is None for p in inside.parameters())  # no gradient outlives its step
    assert_same(standard, inside)
    moved = inside.unused.detach()
    assert (moved != 1).all() if with_before else (moved == 1).all()  # stepped only when `before` gives it a gradient
    ours, theirs = fused.state_dict(), optimizer.state_dict()
    assert ours["param_groups"] == theirs["param_groups"] and ours["state"].keys() == theirs["state"].keys()
    for key, state in theirs["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(ours["state"][key][name], value, atol=0, rtol=0)
    # each state, loaded into the other form (copies: a loaded state shares its tensors), continues alike
    swapped_standard, swapped_inside = nets()
    swapped_standard.load_state_dict(inside.state_dict())
    swapped_inside.load_state_dict(standard.state_dict())
    crossed = torch.optim.Adam(swapped_standard.parameters(), lr=1e-2)
    crossed.load_state_dict(copy.deepcopy(ours))
    crossed_fused = StepInBackward(list(swapped_inside.parameters()), lambda one: torch.optim.Adam(one, lr=1e-2),
                                   before)  # fmt: skip
    crossed_fused.load_state_dict(copy.deepcopy(theirs))
    for step in range(4, 7):
        standard_step(standard, optimizer, batch(step), before)
        standard_step(swapped_standard, crossed, batch(step), before)
        inside_step(swapped_inside, crossed_fused, batch(step))
    assert_same(standard, swapped_standard)
    assert_same(standard, swapped_inside)
    three = StepInBackward(list(inside.parameters())[:3], lambda one: torch.optim.Adam(one))
    with pytest.raises(ValueError, match="not of these 3 parameters"):
        three.load_state_dict(theirs)
    three.close()
    fused.zero_grad()
    inside(batch(0)).sum().backward()
    with pytest.raises(RuntimeError, match="second backward before finish"):
        inside(batch(1)).sum().backward()  # gradient accumulation would step each tensor on a partial gradient
    fused.close()
    inside.zero_grad(set_to_none=True)
    inside(batch(2)).sum().backward()  # the hooks are gone: a later backward keeps its gradients
    assert all(p.grad is not None for p in (inside.a.weight, inside.b.bias))


def test_amnesia_step_in_backward_gives_the_same_edit_and_no_hook_stays(sd):
    standard = fit(sd, "amnesia", REQUEST, make_config("amnesia", **FAST), seed=2, progress=False)
    inside = fit(sd, "amnesia", REQUEST, make_config("amnesia", **FAST, step_in_backward=True), seed=2, progress=False)
    assert inside.manifest["stats"] == standard.manifest["stats"]
    for a, b in zip(standard.changes(), inside.changes(), strict=True):
        torch.testing.assert_close(a.delta, b.delta, atol=0, rtol=0)
    assert_no_stepping_hook(sd)


@pytest.mark.parametrize(("first", "then"), [(False, True), (True, False)])
def test_a_checkpoint_of_either_way_resumes_in_the_other(sd, tmp_path, monkeypatch, first, then):
    cfg = {**FAST, "steps": 4, "fisher_timesteps": 3}
    whole = fit(sd, "amnesia", REQUEST, make_config("amnesia", **cfg), seed=3, progress=False)
    ckpt = tmp_path / "run.ckpt"
    interrupt_fit(sd, make_config("amnesia", **cfg, step_in_backward=first), ckpt, monkeypatch, "training")
    assert_no_stepping_hook(sd)  # interrupted: no hook left either
    inputs = make_inputs("amnesia", checkpoint=ckpt, resume=True)
    resumed = fit(sd, "amnesia", REQUEST, make_config("amnesia", **cfg, step_in_backward=then), inputs, seed=3,
                  progress=False)  # fmt: skip
    assert resumed.manifest["stats"] == whole.manifest["stats"]
    for a, b in zip(whole.changes(), resumed.changes(), strict=True):
        torch.testing.assert_close(a.delta, b.delta, atol=0, rtol=0)


def test_a_checkpoint_that_fails_to_load_leaves_no_hook(sd, tmp_path, monkeypatch):
    ckpt = tmp_path / "run.ckpt"
    cfg = make_config("amnesia", **{**FAST, "steps": 4, "fisher_timesteps": 3}, step_in_backward=True)
    interrupt_fit(sd, cfg, ckpt, monkeypatch, "training")

    def damaged(*args, **kwargs):
        raise ValueError("the checkpoint is damaged")

    monkeypatch.setattr(amnesia_fit, "load_checkpoint", damaged)  # fails after the hooks are in place
    with pytest.raises(ValueError, match="damaged"):
        fit(sd, "amnesia", REQUEST, cfg, make_inputs("amnesia", checkpoint=ckpt, resume=True), seed=3, progress=False)
    assert_no_stepping_hook(sd)
