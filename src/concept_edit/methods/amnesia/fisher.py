"""The diagonal Fisher information of Selective Amnesia (paper 004, section 2 "Elastic Weight Consolidation").

For a variational model the paper measures each weight's sensitivity on the ELBO,

    F_i = E_{p(x|theta*, c) p(c)} [ (d ELBO(x | theta, c) / d theta_i)^2 ],

estimated on samples x of the original model: one gradient per sample, squared, then averaged. The gradient
is per sample, so samples cannot share a backward pass. For a diffusion model the ELBO is (up to weights and
constants) the sum over all T timesteps of the denoising loss, as the official `ddpm_fim.py` computes it:
sum_t L_simple(x, c, t) with fresh noise per t, then squared.

How it is computed here (`diffusion_squared_gradient`), against the official loop (`official_squared_gradient`,
kept for `benchmarks/amnesia_speed.py`: batch-1 forwards, one per timestep, a backward every T / n_chunks):
* the timesteps of one sample are batched: `chunk` of them per forward and backward;
* optionally only S of the T timesteps are used (`timesteps=S`): one drawn uniformly in each of S equal
  strata, the loss scaled by T/S. The estimated gradient g_hat is then unbiased for g = sum_t grad L_t, with
  variance sum over strata of (T/S)^2 Var(grad L_t within the stratum), so F_hat = E[g_hat^2] = g^2 + that
  variance: an upward bias that vanishes at S = T (the default) and shrinks as S grows. Stratifying removes
  the between-strata part of it.
Both use the same noise for the same (sample, timestep) from the same generator, so at S = T the two give
the same F up to float summation order (tested).

For the VAE the ELBO has no timesteps: `vae_squared_gradients` takes a batch's per-sample gradients in one
`torch.func.vmap` pass.

`estimate_fisher` runs the steps with progress, a checkpoint on Ctrl-C and resume (`training.run_steps`).

Across processes (`accelerate launch --num_processes N`, `concept_edit.processes`): the estimate of section
2's F_i (the expectation above, unnumbered there; the F of eq. 1-4) is a mean of per-sample squares,
F_i = (1 / M) sum_m g_{m,i}^2, so it splits exactly. Every process holds the same M samples, and each step
(one sample; a batch of samples for the VAE) draws its timesteps and noise from its own seeded generator,
so the draws do not depend on which process computes the step. Process r takes the steps r, r + N, ...,
sums its squares in float32, the processes add their sums once, at the end (`processes.sum_across`), and
every process divides by the global M: the one-process F up to float32 summation order. Only the main
process shows progress; checkpoints (and resume) are refused with several processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from concept_edit.processes import Group, process_group, share, sum_across
from concept_edit.training import Diverged, load_checkpoint, run_steps, save_checkpoint

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def fisher_timesteps(total: int, used: int | None, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """The timesteps one sample's ELBO gradient is estimated on, and the scale that makes it unbiased.

    All T (scale 1) when `used` is None or >= T; else one uniform draw in each of `used` equal strata of
    [0, T), scale T / used.
    """
    if used is None or used >= total:
        return torch.arange(total), 1.0
    edges = torch.linspace(0, total, used + 1)
    low, width = edges[:-1], edges[1:] - edges[:-1]
    picks = (low + torch.rand(used, generator=generator) * width).floor().long().clamp_(0, total - 1)
    return picks, total / used


def _squares(params: Sequence[torch.nn.Parameter]) -> list[torch.Tensor]:
    grads = [p.grad.float() if p.grad is not None else torch.zeros_like(p, dtype=torch.float32) for p in params]
    return torch._foreach_mul(grads, grads)


def diffusion_squared_gradient(
    params: Sequence[torch.nn.Parameter],
    loss_fn: LossFn,
    x0: torch.Tensor,
    row: torch.Tensor,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
    *,
    scale: float = 1.0,
    chunk: int = 250,
) -> list[torch.Tensor]:
    """(scale * sum_t d L(x0, row, t) / d theta)^2 for one sample, its timesteps batched `chunk` at a time.

    x0 (1, ...), row (1,) or one condition row per timestep (K,), timesteps (K,), noise (K, ...); `loss_fn`
    returns one loss per row.
    """
    for p in params:
        p.grad = None
    rows = row.expand(len(timesteps)) if len(row) == 1 else row
    for start in range(0, len(timesteps), chunk):
        t = timesteps[start : start + chunk]
        n = len(t)
        loss = loss_fn(x0.expand(n, *x0.shape[1:]), rows[start : start + chunk], t, noise[start : start + chunk]).sum()
        (loss * scale).backward()
    return _squares(params)


def official_squared_gradient(
    params: Sequence[torch.nn.Parameter],
    loss_fn: LossFn,
    x0: torch.Tensor,
    row: torch.Tensor,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
    *,
    n_chunks: int = 20,
) -> list[torch.Tensor]:
    """The official estimator's loop for one sample: a batch-1 forward per timestep, the losses of each of
    `n_chunks` chunks summed and backpropagated together (`ddpm_fim.py`)."""
    for p in params:
        p.grad = None
    for part in torch.chunk(torch.arange(len(timesteps)), n_chunks):
        loss = 0.0
        for k in part.tolist():
            loss = loss + loss_fn(x0, row, timesteps[k : k + 1], noise[k : k + 1]).sum()
        loss.backward()
    return _squares(params)


def vae_squared_gradients(
    vae: torch.nn.Module,
    params: Sequence[torch.nn.Parameter],
    x: torch.Tensor,
    rows: torch.Tensor,
    noise: torch.Tensor,
) -> list[torch.Tensor]:
    """Sum over the batch of each sample's squared ELBO gradient: per-sample gradients by `torch.func.vmap`,
    one class at a time (the label is a constant of each vmap: one-hot encoding does not vectorise)."""
    from torch.func import grad, vmap
    from torch.nn.utils.stateless import _reparametrize_module

    names = {id(p): n for n, p in vae.named_parameters()}
    chosen = {names[id(p)]: p.detach() for p in params}
    total = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    for label in rows.unique():
        mask = rows == label

        def one(weights, x, eps, label=label):
            with _reparametrize_module(vae, weights):
                return vae.neg_elbo(x[None], label.reshape(1), noise=eps[None]).sum()

        grads = vmap(grad(one), in_dims=(None, 0, 0))(chosen, x[mask], noise[mask])
        torch._foreach_add_(total, [grads[names[id(p)]].float().pow(2).sum(0) for p in params])
    return total


def estimate_fisher(
    params: Sequence[torch.nn.Parameter],
    *,
    steps: int,
    squared_gradients: Callable[[int], list[torch.Tensor]],
    count: int,
    checkpoint: str | Path | None = None,
    run_config: dict | None = None,
    resume: bool = False,
    progress: bool = True,
    desc: str = "amnesia: fisher",
    group: Group | None = None,
) -> list[torch.Tensor]:
    """F = (1 / count) * sum over steps of `squared_gradients(step)` (each the sum of its samples' g^2).

    With `checkpoint`, partial sums are saved every few steps and on Ctrl-C, and `resume` continues them.
    A non-finite squared gradient stops the estimate at that step (`Diverged`).
    Under `accelerate launch` with several processes (or `group`), this process computes the steps of its
    share (`concept_edit.processes.share`: more processes than steps is refused before any step), the sums
    are added across the processes once, and every process returns the same F. With ranks given by hand
    (an unconnected `group`), it returns its share's sum over `count` only.
    """
    group = process_group() if group is None else group
    if group.count > 1 and (checkpoint is not None or resume):
        raise ValueError(
            f"{desc}: checkpoints (and --resume) work with one process only; with {group.count} processes leave "
            "--checkpoint and --resume out"
        )
    mine = share(steps, group, "Fisher sample steps")
    total = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    start = 0
    config = {"fisher": run_config or {}}
    if resume and checkpoint is not None and Path(checkpoint).exists():
        saved = load_checkpoint(checkpoint, config, "amnesia-fisher")
        total = [t.to(p.device) for t, p in zip(saved["sums"], params, strict=True)]
        start = saved["step"]

    def step_fn(index: int) -> dict[str, float]:
        step = mine[index]  # with one process, index == step: checkpoints count steps as before
        squares = squared_gradients(step)
        if not all(bool(torch.isfinite(s).all()) for s in squares):
            raise Diverged(f"{desc}: the gradient of sample step {step + 1} is not finite: the model's loss overflows")
        torch._foreach_add_(total, squares)
        return {}

    def save_fn(step: int) -> None:
        if checkpoint is not None:
            save_checkpoint(checkpoint, step, config, kind="amnesia-fisher", sums=[t.detach() for t in total])

    every = max(1, steps // 20)
    run_steps(total=len(mine), start=start, step_fn=step_fn, save_fn=save_fn, every=every, desc=desc,
              progress=progress and group.main, checkpointing=checkpoint is not None,
              checkpoint_file=checkpoint)  # fmt: skip
    for p in params:
        p.grad = None
    sum_across(total, group)  # the one sum across processes (nothing with one process)
    return torch._foreach_div(total, float(count))
