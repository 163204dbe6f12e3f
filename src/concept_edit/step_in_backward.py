"""An optimiser stepped inside backward, one parameter at a time, so no full set of gradients is ever held.

A standard step keeps a gradient for every trained tensor until `optimizer.step()`: at Stable Diffusion scale
one more copy of the UNet (3.4 GB in float32). Adam is elementwise, so stepping each tensor as soon as its
gradient is complete (`Tensor.register_post_accumulate_grad_hook`) and dropping that gradient gives the same
update with one gradient alive at a time (PyTorch's "optimizer step in backward" recipe). `before(index, p)`
adds what the loss's autograd graph does not hold (Selective Amnesia's closed-form EWC gradient) first.

With `before`, a tensor that gets no gradient in a step (unused by the forward) is stepped by `finish()` from a
zero gradient plus `before`, as the standard loop steps it after `before` made its missing gradient zero;
without `before` it is left alone, as `optimizer.step()` skips a tensor whose gradient is None.

Exactly one backward per step, then `finish()`: a second backward before `finish()` (gradient accumulation)
would step each tensor again on a partial gradient, so it is refused.

`state_dict()` has the layout of one optimiser over all the parameters, so checkpoints are the same file
either way, and a run can resume in the other mode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class StepInBackward:
    """One optimiser per parameter, stepped from a post-accumulate-grad hook; `finish()` after each backward."""

    def __init__(self, params: Sequence[torch.nn.Parameter],
                 make: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
                 before: Callable[[int, torch.nn.Parameter], None] | None = None):  # fmt: skip
        self.params = list(params)
        self.optimizers = [make([p]) for p in self.params]
        self.before = before
        self._stepped: set[int] = set()
        self._hooks = [p.register_post_accumulate_grad_hook(self._hook(i)) for i, p in enumerate(self.params)]

    def _hook(self, index: int):
        def step(p: torch.Tensor) -> None:
            self._step(index)

        return step

    @torch.no_grad()
    def _step(self, index: int) -> None:
        p = self.params[index]
        if index in self._stepped:
            raise RuntimeError("a second backward before finish(): step inside backward takes one backward per step")
        if self.before is not None:
            self.before(index, p)
        self.optimizers[index].step()
        p.grad = None
        self._stepped.add(index)

    @torch.no_grad()
    def finish(self) -> None:
        """Step the tensors this backward gave no gradient (as a zero gradient), and start the next step."""
        for index, p in enumerate(self.params):
            if self.before is not None and index not in self._stepped and p.requires_grad:
                p.grad = torch.zeros_like(p)
                self._step(index)
        self._stepped.clear()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def close(self) -> None:
        """Remove the hooks and the optimisers' state (the moments: two copies of the trained tensors)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for optimizer in self.optimizers:
            optimizer.state.clear()

    def state_dict(self) -> dict:
        """The state of one optimiser over every parameter (the same layout as `make(params).state_dict()`)."""
        state = {}
        for index, optimizer in enumerate(self.optimizers):
            saved = optimizer.state_dict()
            if 0 in saved["state"]:
                state[index] = saved["state"][0]
        group = {k: v for k, v in self.optimizers[0].state_dict()["param_groups"][0].items() if k != "params"}
        return {"state": state, "param_groups": [{**group, "params": list(range(len(self.params)))}]}

    def load_state_dict(self, saved: dict) -> None:
        if len(saved["param_groups"]) != 1 or len(saved["param_groups"][0]["params"]) != len(self.params):
            raise ValueError(f"the optimiser state is not of these {len(self.params)} parameters")
        group = {k: v for k, v in saved["param_groups"][0].items() if k != "params"}
        state = {int(k): v for k, v in saved["state"].items()}
        for index, optimizer in enumerate(self.optimizers):
            one = {0: state[index]} if index in state else {}
            optimizer.load_state_dict({"state": one, "param_groups": [{**group, "params": [0]}]})
