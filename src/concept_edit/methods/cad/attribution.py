"""Concept attribution (CAD, paper 002): the score of a weight w_i for a concept c is w_i * dJ(c, w)/dw_i.

Eq. 3: J(c, w) - J(c, w with w_i = 0 for i in S) ~= sum_{i in S} w_i dJ/dw_i, so a positive score says that
setting w_i to zero lowers J. Two objectives:

* erase (eq. 4): J = E || sg(eps(x_t, c_base)) - eps(x_t, c) ||^2 on latents x_t the model generates for c
  (guided DDIM, guidance 3 as the official `compute_positive_neurons.py`); the squared norm is summed over
  the latent's elements, as there, and averaged over samples (the official code sums over its 50 steps,
  a constant factor). Each x_t is scored at the timestep t of the step it is the input of, from pure
  noise (t = T) on; the official `custom_sample` scores the latent *after* step k at step k's timestep
  (off by one step, so it never scores x_T and scores the finished x_0); not reproduced;
* amplify (eq. 5): J = -E || eps - eps(x_t, c) ||^2, the training loss (mean over elements, as the official
  `compute_negative_neurons.py`) on images of the concept noised to every DDIM timestep.

How it is computed (the official code regenerates a trajectory for every timestep, backpropagates both
guidance branches into every UNet parameter and saves the full gradient dictionary):
* one trajectory per sample; every step's latent is kept (`erase_samples`) and the base prediction it
  needs is the unconditional branch that guided sampling has just computed (when c_base is "");
* the backward pass runs on the conditional branch only (the base term is a constant under sg) and only
  the chosen weights require grad, so autograd computes no other weight's gradient;
* gradients are accumulated in float32 buffers for the chosen weights, whatever the model's dtype;
* dJ/dw = (1 / M) sum over the M samples of dJ_m/dw is a sum over samples, so the backward batches can be
  dealt out to several processes, each adding its batches into its own buffers, and the buffers summed once
  across processes before the scores w * dJ/dw are taken (`cad.fit.attribute`, `accelerate launch`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from concept_edit.methods.cad.config import GROUPS
from concept_edit.models.conditioning import Conditions, predict_noise
from concept_edit.models.loading import model_info
from concept_edit.models.targets import denoiser
from concept_edit.training import step_generator

OBJECTIVES = ("erase", "amplify")


def group_weights(pipe, groups: tuple[str, ...]) -> dict[str, nn.Parameter]:
    """Pipeline-relative name -> weight of every Linear / Conv2d in the chosen module groups, in module order.

    ff: the transformer blocks' feed-forward layers; attn1 / attn2: self- / cross-attention projections
    (q, k, v, out); residual: the ResNet blocks' convolutions and time projections (the paper's Table 8).
    Biases are not attributed (the official ablation takes 2-d weights only).
    """
    from diffusers.models.attention import FeedForward
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    for group in groups:
        if group not in GROUPS:
            raise ValueError(f"unknown module group {group!r}; choose from {', '.join(GROUPS)}")
    prefix, unet = denoiser(pipe)
    owners: dict[str, str] = {}  # module name -> group of the block that owns it
    for name, module in unet.named_modules():
        group = None
        if isinstance(module, FeedForward):
            group = "ff"
        elif isinstance(module, Attention):
            group = "attn2" if module.is_cross_attention else "attn1"
        elif isinstance(module, ResnetBlock2D):
            group = "residual"
        if group in groups:
            owners[name] = group
    chosen = {}
    for name, module in unet.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d) and any(name.startswith(owner + ".") for owner in owners):
            chosen[f"{prefix}.{name}.weight"] = module.weight
    if not chosen:
        raise ValueError(f"the module groups {list(groups)} match no layer of this model's denoiser")
    return chosen


def epsilon(pipe, output: torch.Tensor, latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The UNet output as a noise prediction: eq. 4 and 5 are written in eps; a v-prediction model (SD 2.x at
    768 px) is converted with eps = sqrt(a_t) v + sqrt(1 - a_t) x_t, so J measures the same thing there."""
    kind = pipe.scheduler.config.get("prediction_type", "epsilon")
    if kind == "epsilon":
        return output
    if kind != "v_prediction":
        raise ValueError(f"CAD needs an epsilon or v-prediction model; this one predicts {kind!r}")
    alphas = pipe.scheduler.alphas_cumprod.to(output.device)[timesteps.to(output.device).long()]
    alphas = alphas.to(output.dtype).reshape(-1, *([1] * (output.ndim - 1)))
    return alphas.sqrt() * output + (1 - alphas).sqrt() * latents.to(output.dtype)


@dataclass
class Samples:
    """What J is evaluated on: rows (latent x_t, timestep, condition row, target).

    erase: target = eps(x_t, c_base) (a constant under sg); amplify: target = the noise that made x_t.
    """

    latents: torch.Tensor
    timesteps: torch.Tensor
    rows: torch.Tensor  # index into the Conditions
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.latents)

    def part(self, start: int, stop: int) -> Samples:
        return Samples(self.latents[start:stop], self.timesteps[start:stop], self.rows[start:stop],
                       self.targets[start:stop])  # fmt: skip


def chosen_steps(total: int, used: int | None) -> list[int]:
    """Indices of `used` of `total` DDIM steps, evenly spaced and including the first (all when None)."""
    if used is None or used >= total:
        return list(range(total))
    return sorted({round(k * (total - 1) / max(used - 1, 1)) for k in range(used)})


@torch.no_grad()
def erase_samples(
    pipe,
    cond: Conditions,
    concept_rows: list[int],
    base_rows: list[int],
    uncond_row: int,
    *,
    trajectories: int,
    scheduler,
    steps: list[int],
    guidance: float,
    seed: int,
    batch_size: int = 16,
    progress: bool = False,
) -> Samples:
    """`trajectories` guided DDIM runs per concept (one batch); every chosen step's latent becomes a sample.

    The base prediction eps(x_t, c_base) is the guided step's unconditional branch when c_base is the
    unconditional row, else one more row in the same UNet call.
    """
    unet = pipe.unet
    size = model_info(pipe).resolution // getattr(pipe, "vae_scale_factor", 8)
    n = trajectories * len(concept_rows)
    concept = torch.tensor([concept_rows[k % len(concept_rows)] for k in range(n)])
    base = torch.tensor([base_rows[k % len(base_rows)] for k in range(n)])
    noise = torch.cat([
        torch.randn((1, unet.config.in_channels, size, size), generator=step_generator(seed, k, 11)) for k in range(n)
    ])  # fmt: skip  # one generator per trajectory: a trajectory does not depend on how many are drawn
    parts, kept = [], set(steps)
    for start in tqdm(range(0, n, batch_size), desc="cad: sampling", disable=not progress, leave=False):
        stop = min(start + batch_size, n)
        x = (noise[start:stop] * scheduler.init_noise_sigma).to(pipe.device, torch.float32)
        c, b = concept[start:stop], base[start:stop]
        own_base = b != uncond_row
        for k, t in enumerate(scheduler.timesteps):
            rows = [torch.full_like(c, uncond_row), c, b[own_base]]
            inputs = torch.cat([x, x, x[own_base]])
            out = predict_noise(unet, scheduler.scale_model_input(inputs, t).to(unet.dtype), t,
                                cond.take(torch.cat(rows))).float()  # fmt: skip
            out_u, out_c = out[: len(x)], out[len(x) : 2 * len(x)]
            if k in kept:  # x_t is scored at t, the step it is the input of (eq. 4)
                base_eps = epsilon(pipe, out, inputs, t.expand(len(inputs)))
                target = base_eps[: len(x)].clone()
                target[own_base] = base_eps[2 * len(x) :]
                parts.append((x.clone(), t.expand(len(x)).clone(), c.clone(), target))
            x = scheduler.step(out_u + guidance * (out_c - out_u), t, x).prev_sample
    return Samples(*(torch.cat([p[i] for p in parts]) for i in range(4)))


@torch.no_grad()
def amplify_samples(pipe, images: torch.Tensor, concept_row: int, *, scheduler, steps: list[int], seed: int) -> Samples:
    """Images (N, 3, H, W in [-1, 1]) encoded by the VAE and noised to each chosen DDIM timestep."""
    vae = pipe.vae
    latents = []
    for k in range(len(images)):
        dist = _encode(vae, images[k : k + 1].to(pipe.device))
        latents.append(dist.sample(generator=step_generator(seed, k, 12)))  # as the official real-image path
    latents = torch.cat(latents).float() * vae.config.scaling_factor
    timesteps = scheduler.timesteps[steps]
    parts = []
    for k, z in enumerate(latents):
        noise = torch.randn((len(timesteps), *z.shape), generator=step_generator(seed, k, 13)).to(z.device)
        noisy = scheduler.add_noise(z.expand(len(timesteps), *z.shape), noise, timesteps)
        parts.append((noisy, timesteps.clone(), torch.full((len(timesteps),), concept_row), noise))
    return Samples(*(torch.cat([p[i] for p in parts]) for i in range(4)))


def _encode(vae, pixels: torch.Tensor):
    """The VAE's latent distribution; in float32 when the VAE asks for it (`force_upcast`, SDXL's fp16 VAE
    overflows), through a float32 view of the encoder's weights: the pipeline's own stay as they are."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    if vae.dtype == torch.float32 or not vae.config.get("force_upcast", False):
        return vae.encode(pixels.to(vae.dtype)).latent_dist

    def run(module, x):
        tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
        return torch.func.functional_call(module, {k: v.float() for k, v in tensors.items()}, (x,))

    moments = run(vae.encoder, pixels.float())
    if getattr(vae, "quant_conv", None) is not None:
        moments = run(vae.quant_conv, moments)
    return DiagonalGaussianDistribution(moments)


def sample_losses(pipe, samples: Samples, cond: Conditions, objective: str) -> torch.Tensor:
    """Each sample's contribution to J (before averaging): erase +||.||^2 summed, amplify -||.||^2 averaged."""
    unet = pipe.unet
    timesteps = samples.timesteps.to(pipe.device)  # DDIM's scale_model_input is the identity: latents go in as they are
    out = predict_noise(unet, samples.latents.to(unet.dtype), timesteps, cond.take(samples.rows)).float()
    eps = epsilon(pipe, out, samples.latents, timesteps)
    squared = (eps - samples.targets.to(eps.device)) ** 2
    if objective == "erase":
        return squared.flatten(1).sum(1)
    return -squared.flatten(1).mean(1)


@torch.no_grad()
def objective_value(pipe, samples: Samples, cond: Conditions, objective: str, batch_size: int = 32) -> float:
    """J on these samples (with the base term held at its stored value, as sg holds it for the gradient)."""
    total = 0.0
    for start in range(0, len(samples), batch_size):
        total += float(sample_losses(pipe, samples.part(start, start + batch_size), cond, objective).double().sum())
    return total / len(samples)


@contextlib.contextmanager
def gradients_for(pipe, weights: dict[str, nn.Parameter]):
    """Only the chosen weights require grad inside the block; every flag and `.grad` is restored after it."""
    _, unet = denoiser(pipe)
    saved = {p: (p.requires_grad, p.grad) for p in unet.parameters()}
    chosen = {id(p) for p in weights.values()}
    try:
        for p in unet.parameters():
            p.requires_grad_(id(p) in chosen)
        yield
    finally:
        for p, (flag, grad) in saved.items():
            p.requires_grad_(flag)
            p.grad = grad


def add_batch_gradient(
    pipe,
    samples: Samples,
    cond: Conditions,
    weights: dict[str, nn.Parameter],
    objective: str,
    grads: dict[str, torch.Tensor],
    *,
    batch: int,
    batch_size: int,
) -> None:
    """Add this batch's share of dJ/dw (J averages over all samples: the share is its samples' dJ_m/dw summed,
    over the global sample count) into the float32 `grads` buffers.

    Call inside `gradients_for(pipe, weights)`: autograd then computes no other weight's gradient.
    """
    part = samples.part(batch * batch_size, (batch + 1) * batch_size)
    loss = sample_losses(pipe, part, cond, objective).sum()  # unscaled: 1/N on an fp16 graph would underflow
    found = torch.autograd.grad(loss, list(weights.values()))
    for name, g in zip(weights, found, strict=True):
        grads[name] += g.float() / len(samples)


def batch_count(samples: Samples, batch_size: int) -> int:
    return -(-len(samples) // batch_size)


def scores_from(weights: dict[str, nn.Parameter], grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """w * dJ/dw in float32 (eq. 3), by weight name."""
    return {name: w.detach().float() * grads[name] for name, w in weights.items()}
