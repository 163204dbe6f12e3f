"""Erasing Concepts from Diffusion Models (ESD; Gandikota et al., ICCV 2023, paper 003): fine-tune the
denoiser so that the concept's conditional prediction follows negative guidance from the model's own
knowledge, with no data.

The page asks for P_theta(x) ∝ P*(x) / P*(c|x)^eta; by Bayes and Tweedie this becomes the regression
target (ESD's own; paper 000 writes its eta = 0 case as eq. 11, after classifier-free guidance, eq. 10)

    eps_theta(x_t, c, t)  <-  eps*(x_t, t) - eta (eps*(x_t, c, t) - eps*(x_t, t))

where eps* is the frozen original model. x_t is the model's own sample for c: guided DDIM from noise for
k of K steps, k uniform (the official scripts: `sampling_steps` 50, guidance 3; here 50 too, or a shipped
world's own default: 25 for ShapesSD). With an anchor (the
request's guide) the unconditional branch is replaced by the anchor's prediction, eps*(x_t, a) - eta
(eps*(x_t, c) - eps*(x_t, a)), which steers c toward a. `eta = 0` with no anchor is the eigen paper's
cross-attention fine-tuning, eq. 11: eps_theta(x_t, c, t) <- eps*(x_t, t).

Variants (which Linear/Conv2d weights and biases train, as the official diffusers script `esd_sd.py` selects
them, so norm layers never train; the CompVis `train-esd.py` selects by `named_parameters` and its `noxattn`
(ESD-u) and `full` also train the GroupNorm/LayerNorm weights): `x` cross-attention (ESD-x), `u` everything
else (ESD-u), `all`, `kv` cross-attention to_k/to_v only (the official `esd-x-strict`). With `lora_rank` > 0
the chosen modules' weights get peft LoRA adapters instead and the edit holds their low-rank factors.

Where x_t comes from (`sampler`):
* `trained` (default; the original CompVis `train-esd.py`): x_t is sampled with the model being trained, so
  the trajectories follow the erasure as it proceeds; the frozen predictions are then extra calls. On
  ShapesSD it erases circle in far fewer samples: with the stream, 50 samples (median of 3 seeds) against
  275-375 with `frozen`, which is cheaper per sample but slower to the same erasure
  (`benchmarks/results/esd_speed.json`); with pools on the tuning seeds it left circle in 0 of 16 prompts
  at 150-450 iterations where `frozen` left 1-5 of 16 at any length. So it is the default;
* `frozen` (the official diffusers script `esd_sd.py`): x_t is sampled with the original model. Guided DDIM
  at step k has already computed eps*(x_t, c) and eps*(x_t, "") to take that step, at exactly the x_t and t
  ESD trains on, so the target costs nothing more (an anchor adds one prediction per step).

How samples are drawn (`schedule`):
* `stream` (default): P trajectories are in flight, P = `batch_size` and at least one per concept (slot i
  draws concept i mod n). Each iteration trains on every one of them at its current (x_t, t), then advances
  each by one guided DDIM step; a finished trajectory restarts from fresh noise in its slot. With the
  `trained` sampler that step is taken with this iteration's weights (before the update) and its
  conditional prediction is the training forward's own output, so x_t costs one unconditional call per
  sample and the target two frozen ones, where the CompVis loop spends ~K/2 guided steps per sample.
  Trajectory i starts pre-rolled to step i K / P, so a batch spreads over the schedule.
  How this differs from the official loop, which draws k ~ U{0..K-1} and fresh noise for every sample:
  k is not drawn but swept, from noise to clean, so gradients come in cycles of K iterations and k is
  uniform only over whole sweeps; a run of N iterations starts N P / K independent noises, not N (ESD-x on
  ShapesSD at its defaults: 8; at SD's K = 50 and 200 iterations: 4); with the `trained` sampler x_t at
  step k was drawn by the weights of the last k iterations, not all by the current ones. With the `frozen`
  sampler each trajectory is exactly the official x_t law, step by step;
* `pool`: every `refresh_every` iterations, `pool_trajectories` trajectories are sampled in one batch and
  *every* step of each becomes a training sample (x_t, t, c, target); each iteration trains on `batch_size`
  samples drawn uniformly from this pool. Each pool sample has the official distribution (same noise law,
  k uniform); samples of one pool share trajectories (they are correlated) and, with the `trained` sampler,
  come from weights up to `refresh_every` iterations old. With refresh_every * batch_size ~= P * K each
  sample is used about once, as in the official loop;
* `official`: the official loop itself: each iteration samples `batch_size` fresh trajectories one by one,
  each to its own random step, and calls the frozen model twice more at x_t (kept as the baseline that
  `benchmarks/esd_speed.py` times).

One copy of the model is kept, plus a copy of the trained tensors only: the frozen model is the same UNet
called with their original values (`functional_call`; with LoRA, with the B factors set to zero). For
ESD-x that copy is the cross-attention (a few % of the UNet); for ESD-u it is most of the UNet (stored in
bf16 under `precision="bf16"`), which is still one copy fewer than the official scripts' two UNets.

Choices, and where they follow which official script (rohitgandikota/erasing):
* x_t is the latent after k guided DDIM steps and is scored at the timestep of step k, as `esd_sd.py` does
  (the CompVis script scores a random DDPM t in [20k, 20k + 20) against a latent at another noise level;
  that mismatch is not reproduced, also not by the `trained` sampler);
* the anchor follows the formula above with x_t sampled for the concept; it is not the official
  `--erase_from` (which samples for, and trains on, the "from" prompt);
* the unconditional input is the pipeline's own: zeros on SDXL (force_zeros_for_empty_prompt) both when
  sampling and in the target, where `esd_sdxl.py` encodes "" for the target's null branch.
Several concepts train in one run: each trajectory is drawn for one of them, in turn.
The official scripts use batch 1, Adam and lr 1e-5 (CompVis, 1000 iterations) or 5e-5 (diffusers,
200 iterations). Their negative guidance is written two ways, and `eta` here is always the paper's:
* CompVis `train-esd.py`: target e_0 - eta (e_p - e_0), i.e. eps*(x_t, "") - eta (eps*(x_t, c) - eps*(x_t, "")),
  the paper's form; its default `--negative_guidance 1` is the paper's eta = 1;
* diffusers `esd_sd.py` / `esd_sdxl.py` without `--erase_from`: target eps*(x_t, c) - eta_d (eps*(x_t, c) -
  eps*(x_t, "")) = eps*(x_t, "") - (eta_d - 1)(eps*(x_t, c) - eps*(x_t, "")), so its eta_d is the paper's
  eta + 1 and its default `--negative_guidance 2` is the paper's eta = 1 (`eta_from_official` converts).
  With `--erase_from a` its target eps*(x_t, a) - eta_d (eps*(x_t, c) - eps*(x_t, "")) has no paper form.
Defaults on Stable Diffusion (and any model but ShapesSD) are the paper's: Adam lr 1e-5, 1000 iterations,
batch 1, eta 1 (both official scripts' default, not the diffusers script's number 2 taken into the paper's
formula). On ShapesSD lr and iterations are by variant, chosen on its tuning seeds: ESD-x at lr 1e-3 took
circle to 0/16 in 40 iterations but cost the other objects 6-27 points by 150, at 3e-4 it reached 0-1/16 by 80
iterations and kept them within 2-4 points up to 200 (`benchmarks/esd_quality.py` reports the defaults on
other seeds); u and all at 1e-5 for 1000.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from concept_edit.edit import trainable
from concept_edit.methods.esd.config import (  # noqa: F401 - re-exported
    PRECISIONS,
    SAMPLERS,
    SCHEDULES,
    VARIANTS,
    ESDConfig,
    ESDInputs,
)
from concept_edit.methods.registry import EditRequest, register
from concept_edit.models.conditioning import Conditions, encode_conditions, predict_noise
from concept_edit.models.loading import model_info
from concept_edit.models.prompts import concept_ids
from concept_edit.models.targets import cross_attention_layers, denoiser, get_parameter
from concept_edit.training import (
    check_checkpoint,
    load_checkpoint,
    run_steps,
    save_checkpoint,
    step_generator,
    step_rng,
)
from concept_edit.validation import check_choice
from concept_edit.worlds import world_of

log = logging.getLogger(__name__)

OFFICIAL_STEPS = 50  # DDIM steps of a trajectory in both official scripts


def variant_parameters(pipe, variant: str, *, weights_only: bool = False) -> list[str]:
    """Pipeline-relative names of the Linear/Conv2d parameters a variant trains (official module selection).

    As `esd_sdxl.py` does, on SDXL `u` and `all` keep only modules inside the UNet's blocks and leave out the
    embeddings (time, added text/time): the official SD script trains them too, and so does this on SD.
    """
    check_choice("variant", variant, VARIANTS)
    prefix, unet = denoiser(pipe)
    cross = [layer.path for layer in cross_attention_layers(pipe)]
    kv = {p for layer in cross_attention_layers(pipe) for p in (layer.to_k, layer.to_v)}
    sdxl = getattr(unet.config, "addition_embed_type", None) == "text_time"
    names = []
    for name, module in unet.named_modules():
        if not isinstance(module, nn.Linear | nn.Conv2d):
            continue
        path = f"{prefix}.{name}"
        in_cross = any(path == c or path.startswith(c + ".") for c in cross)
        broad = not sdxl or ("block" in name and "emb" not in name)
        keep = {"x": in_cross, "u": not in_cross and broad, "all": broad, "kv": path in kv}[variant]
        if keep:
            names += [f"{path}.{p}" for p, _ in module.named_parameters(recurse=False)]
    if weights_only:
        names = [n for n in names if n.endswith(".weight")]
    if not names:
        raise ValueError(f"variant {variant!r} matches no parameter of this model's denoiser")
    return names


def esd_target(eps_concept: torch.Tensor, eps_base: torch.Tensor, eta: float) -> torch.Tensor:
    """The ESD regression target eps*(x_t, base) - eta (eps*(x_t, c) - eps*(x_t, base))."""
    return eps_base - eta * (eps_concept - eps_base)


OFFICIAL_SCRIPTS = ("compvis", "diffusers")


def eta_from_official(negative_guidance: float, script: str) -> float:
    """The paper's eta for an official script's `--negative_guidance` (see the module docstring).

    CompVis `train-esd.py` writes the paper's form, so the value carries over; the diffusers scripts subtract
    eta_d (eps_c - eps_0) from eps_c instead of from eps_0, which is the paper's eta = eta_d - 1."""
    check_choice("script", script, OFFICIAL_SCRIPTS)
    eta = negative_guidance - 1 if script == "diffusers" else negative_guidance
    if eta < 0:
        raise ValueError(f"--negative_guidance {negative_guidance} of the {script} script is eta {eta} < 0 here")
    return eta


class _Tensors:
    """A dataclass of tensors that a checkpoint saves as a dict (the pool or the stream)."""

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class _Pool(_Tensors):
    """Training samples: latents x_t, timesteps t, concept index, target."""

    latents: torch.Tensor
    timesteps: torch.Tensor
    concepts: torch.Tensor
    targets: torch.Tensor


@dataclass
class _Stream(_Tensors):
    """Trajectories in flight: latents x at DDIM step `steps` (index into the schedule), concept, and how many
    trajectories have been started (the next one's number seeds its noise)."""

    latents: torch.Tensor
    steps: torch.Tensor
    concepts: torch.Tensor
    started: torch.Tensor


class _Trainer:
    """Everything one ESD run needs besides the weights: conditioning, the DDIM schedule, the frozen view."""

    def __init__(self, pipe, request: EditRequest, config: ESDConfig, unet, frozen: dict[str, torch.Tensor]):
        from diffusers import DDIMScheduler

        self.pipe, self.config, self.unet, self.frozen = pipe, config, unet, frozen
        self.device = pipe.device
        self.concepts = list(request.concepts)
        anchors = list(request.concept_guides)
        self.anchor_empty = torch.tensor([a == "" for a in anchors])
        # rows: the concepts, then "", then each concept's anchor ("" when none)
        self.cond = encode_conditions(pipe, [*self.concepts, "", *anchors])
        self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        steps = config.sampling_steps or world_of(pipe).method_sampling_steps or OFFICIAL_STEPS
        self.scheduler.set_timesteps(steps, device=self.device)
        self.timesteps = self.scheduler.timesteps
        size = model_info(pipe).resolution // getattr(pipe, "vae_scale_factor", 8)
        self.latent_shape = (unet.config.in_channels, size, size)
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
        self.frozen_calls = 0  # UNet rows evaluated with the frozen weights, for the stats

    def _rows(self, concepts: torch.Tensor, which: str) -> Conditions:
        n = len(self.concepts)
        index = {"concept": concepts, "uncond": torch.full_like(concepts, n), "anchor": concepts + n + 1}[which]
        return self.cond.take(index)

    def eps(self, x, t, cond: Conditions, *, frozen: bool) -> torch.Tensor:
        """The UNet's prediction in float32 (latents are kept in float32 and cast to the UNet's dtype here)."""
        with self.autocast:
            out = predict_noise(self.unet, x.to(self.unet.dtype), t, cond, replace=self.frozen if frozen else None)
        if frozen:
            self.frozen_calls += x.shape[0]
        return out.float()

    @torch.no_grad()
    def both_branches(self, x, t, concepts: torch.Tensor, *, frozen: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps_uncond, eps_concept) at (x, t) in one UNet call of 2N rows; t a scalar or one per row."""
        cond = Conditions.cat([self._rows(concepts, "uncond"), self._rows(concepts, "concept")])
        both = self.eps(torch.cat([x, x]), t if t.ndim == 0 else torch.cat([t, t]), cond, frozen=frozen)
        return both.chunk(2)

    @torch.no_grad()
    def guided_step(self, x, t, concepts: torch.Tensor, *, frozen: bool):
        """One guided DDIM step for rows of concepts; also the sampler's own (eps_c, eps_uncond)."""
        eps_u, eps_c = self.both_branches(x, t, concepts, frozen=frozen)
        guided = eps_u + self.config.sampling_guidance * (eps_c - eps_u)
        return self.scheduler.step(guided, t, x).prev_sample, eps_c, eps_u

    @torch.no_grad()
    def frozen_targets(self, x, t, concepts, eps_c=None, eps_u=None) -> torch.Tensor:
        """The ESD target at (x, t); reuses the frozen eps_c / eps_u when the sampler already computed them."""
        t = t.expand(len(x)) if t.ndim == 0 else t
        if eps_c is None and eps_u is None and bool(self.anchor_empty.all()):  # both branches in one call
            eps_u, eps_c = self.both_branches(x, t, concepts, frozen=True)
        if eps_c is None:
            eps_c = self.eps(x, t, self._rows(concepts, "concept"), frozen=True)
        plain = self.anchor_empty.to(concepts.device)[concepts]  # rows whose base is the unconditional branch
        if eps_u is None and plain.any():
            eps_u = torch.zeros_like(eps_c)
            eps_u[plain] = self.eps(x[plain], t[plain], self._rows(concepts[plain], "uncond"), frozen=True)
        base = eps_u if plain.all() else torch.empty_like(eps_c)
        if not plain.all():
            anchored = ~plain
            rows = self._rows(concepts[anchored], "anchor")
            base[anchored] = self.eps(x[anchored], t[anchored], rows, frozen=True)
            if plain.any():
                base[plain] = eps_u[plain]
        return esd_target(eps_c, base, self.config.eta)

    def noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        x = torch.randn((n, *self.latent_shape), generator=generator)
        return (x * self.scheduler.init_noise_sigma).to(self.device)

    @torch.no_grad()
    def sample_pool(self, seed: int, refresh: int) -> _Pool:
        """P trajectories (concepts in turn) and every step of each as a sample."""
        p, k = self.config.pool_trajectories, len(self.timesteps)
        concepts = (torch.arange(p) + refresh * p) % len(self.concepts)
        concepts = concepts.to(self.device)
        x = self.noise(p, step_generator(seed, refresh, 1))
        frozen = self.config.sampler == "frozen"
        parts = []
        for t in self.timesteps:
            x_next, eps_c, eps_u = self.guided_step(x, t, concepts, frozen=frozen)
            target = self.frozen_targets(x, t, concepts, eps_c, eps_u) if frozen else None
            parts.append((x, t.expand(p), concepts, target))
            x = x_next
        latents, timesteps, rows = (torch.cat([part[i] for part in parts]) for i in range(3))
        if frozen:
            targets = torch.cat([part[3] for part in parts])
        else:  # the trained model drew the trajectories: the frozen targets in batches over all of its steps
            chunk = max(p, 32)  # both frozen branches in one call: 2 * chunk UNet rows
            targets = torch.cat([
                self.frozen_targets(latents[i : i + chunk], timesteps[i : i + chunk], rows[i : i + chunk])
                for i in range(0, len(latents), chunk)
            ])  # fmt: skip
        log.debug("pool %d: %d samples from %d trajectories of %d steps", refresh, p * k, p, k)
        return _Pool(latents, timesteps, rows, targets)

    @torch.no_grad()
    def official_samples(self, seed: int, step: int) -> _Pool:
        """The official loop: each sample a fresh trajectory stopped at a random step, then frozen calls."""
        rng = step_rng(seed, step, 2)
        gen = step_generator(seed, step, 3)
        frozen = self.config.sampler == "frozen"
        parts = []
        for _ in range(self.config.batch_size):
            concept = torch.tensor([int(rng.integers(len(self.concepts)))], device=self.device)
            k = int(rng.integers(len(self.timesteps)))
            x = self.noise(1, gen)
            for t in self.timesteps[:k]:
                x = self.guided_step(x, t, concept, frozen=frozen)[0]
            t = self.timesteps[k]
            eps_c = self.eps(x, t, self._rows(concept, "concept"), frozen=True)  # separate calls, as there
            parts.append((x, t.reshape(1), concept, self.frozen_targets(x, t, concept, eps_c)))
        return _Pool(*[torch.cat(column) for column in zip(*parts, strict=True)])

    def predict(self, batch: _Pool) -> torch.Tensor:
        """The trained model's eps(x_t, c, t) for a batch, with gradients."""
        return self.eps(batch.latents, batch.timesteps, self._rows(batch.concepts, "concept"), frozen=False)

    # --- stream: trajectories in flight, each advanced one step per iteration -------------------------------

    @property
    def stream_width(self) -> int:
        """Trajectories in flight: `batch_size`, and at least one per concept (slot i keeps concept i mod n)."""
        return max(self.config.batch_size, len(self.concepts))

    @torch.no_grad()
    def start_stream(self, seed: int) -> _Stream:
        """P trajectories, trajectory i pre-rolled to step i K / P so that their steps are spread over the
        schedule from the first iteration (drawn with the weights as they are: the original ones)."""
        p, k = self.stream_width, len(self.timesteps)
        stream = _Stream(
            latents=torch.cat([self.noise(1, step_generator(seed, i, 4)) for i in range(p)]),
            steps=torch.tensor([i * k // p for i in range(p)], device=self.device),
            concepts=(torch.arange(p) % len(self.concepts)).to(self.device),
            started=torch.tensor(p),
        )
        frozen = self.config.sampler == "frozen"
        for step in range(int(stream.steps.max())):
            rows = stream.steps > step
            x = stream.latents[rows]
            stream.latents[rows] = self.guided_step(x, self.timesteps[step], stream.concepts[rows], frozen=frozen)[0]
        return stream

    @torch.no_grad()
    def stream_batch(self, stream: _Stream) -> tuple[_Pool, tuple | None]:
        """The current (x_t, t) of every trajectory in flight with its ESD target; with the frozen sampler also
        the frozen (eps_c, eps_u) that its next guided step reuses."""
        x, concepts = stream.latents.clone(), stream.concepts.clone()  # the stream moves on in place
        t = self.timesteps[stream.steps]
        if self.config.sampler != "frozen":
            return _Pool(x, t, concepts, self.frozen_targets(x, t, concepts)), None
        eps_u, eps_c = self.both_branches(x, t, concepts, frozen=True)
        return _Pool(x, t, concepts, self.frozen_targets(x, t, concepts, eps_c, eps_u)), (eps_c, eps_u)

    @torch.no_grad()
    def advance_stream(self, stream: _Stream, batch: _Pool, eps_c, eps_u, seed: int) -> None:
        """One guided DDIM step for every trajectory in flight (rows at different timesteps); a finished
        trajectory is replaced by fresh noise for the same slot (so the same concept).

        With the trained sampler eps_c is the training forward's own prediction (this iteration's weights,
        before the update) and only eps_u costs a call, so the trajectories are drawn by the model as it is
        trained, one step per iteration."""
        if eps_u is None:
            eps_u = self.eps(batch.latents, batch.timesteps, self._rows(batch.concepts, "uncond"), frozen=False)
        guided = eps_u + self.config.sampling_guidance * (eps_c - eps_u)
        for i, t in enumerate(batch.timesteps):
            stream.latents[i] = self.scheduler.step(guided[i : i + 1], t, batch.latents[i : i + 1]).prev_sample[0]
        stream.steps += 1
        for i in torch.nonzero(stream.steps == len(self.timesteps)).flatten().tolist():
            number = int(stream.started)
            stream.latents[i] = self.noise(1, step_generator(seed, number, 4))[0]
            stream.steps[i] = 0
            stream.started += 1


def _frozen_view(unet, tuning, lora: bool, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """UNet parameter name -> the tensor that gives the original model's output in place of that parameter.

    Dense training keeps a copy of the trained tensors only (for ESD-u that is most of the UNet; under bf16
    autocast the copy is stored in bf16, which autocast would cast it to anyway); LoRA keeps zeros for B.
    """
    names = {id(p): n for n, p in unet.named_parameters()}
    frozen = {}
    for p in tuning.parameters:
        name = names[id(p)]
        if lora:
            if "lora_B" in name:
                frozen[name] = torch.zeros_like(p)
        else:  # on the CPU the copy trainable() keeps for the revert is this tensor itself: not held twice
            frozen[name] = tuning.original(p, dtype)
    return frozen


def _check(pipe, request: EditRequest, config: ESDConfig) -> None:
    if request.preserve:
        raise ValueError("ESD has no preservation term: the preserve list would be ignored; leave it out")
    for concept in request.concepts:
        concept_ids(pipe, concept)
    for anchor in request.concept_guides:  # the request already refused an anchor equal to its concept
        if anchor:
            concept_ids(pipe, anchor)
    if config.lora_rank == 0 and pipe.unet.dtype != torch.float32:
        raise ValueError(
            f"full ESD fine-tuning keeps float32 master weights, but the model is loaded in {pipe.unet.dtype}; "
            "load it in float32 (--dtype float32; use --precision bf16 for mixed precision) or train LoRA "
            "(--lora-rank)"
        )
    if config.lora_rank > 0:
        _check_lora_rank(pipe, config)


def _check_lora_rank(pipe, config: ESDConfig) -> None:
    """Refuse a LoRA rank above what any trained weight allows (min of its two sides), as export-lora does.

    A rank past that adds factors that cannot change the weight and makes each step huge (rank 100000 on
    128-384-wide layers: minutes per iteration). A rank above some layers' limit (ESD-u's 4-channel conv_out)
    but within others' is allowed: those layers simply use all of their rank.
    """
    widest, where = 0, ""
    for key in variant_parameters(pipe, config.variant, weights_only=True):
        shape = get_parameter(pipe, key).shape
        limit = min(shape[0], math.prod(shape[1:]))
        if limit > widest:
            widest, where = limit, f"{key} {tuple(shape)}"
    if config.lora_rank > widest:
        raise ValueError(
            f"lora_rank {config.lora_rank} is larger than any trained weight allows: the widest, {where}, has rank "
            f"at most {widest}"
        )


@register("esd")
def fit_esd(pipe, request: EditRequest, config: ESDConfig, inputs: ESDInputs, *, seed: int = 0, progress: bool = True):
    """Train ESD on `pipe` for `request.concepts` and return the change as an `Edit` (pipeline restored)."""
    _check(pipe, request, config)
    tuned = world_of(pipe).method_defaults("esd", pipe)
    lr, iterations = config.learning_rate_for(tuned), config.iterations_for(tuned)
    lora = config.lora_rank > 0
    keys = variant_parameters(pipe, config.variant, weights_only=lora)
    if inputs.resume and (inputs.checkpoint is None or not Path(inputs.checkpoint).exists()):
        raise ValueError(f"--resume: there is no checkpoint at {inputs.checkpoint}")
    _, unet = denoiser(pipe)
    started = time.perf_counter()  # logged, not stored: the manifest of a seeded run is reproducible
    # every step draws its randomness from (seed, step) and the learning rate is constant, so a run is a prefix
    # of any longer one: a checkpoint can be resumed with more iterations (not part of what must match)
    options = {k: v for k, v in dataclasses.asdict(config).items() if k != "iterations"}
    run_config = {"config": options, "request": request.to_dict(), "seed": seed}
    if inputs.resume:  # before any work: the file is this method's checkpoint, of this run
        check_checkpoint(inputs.checkpoint, "esd", run_config)
    with trainable(pipe, keys, kind="low_rank" if lora else "dense", rank=max(config.lora_rank, 1),
                   alpha=config.lora_alpha) as tuned:  # fmt: skip
        copy_dtype = torch.bfloat16 if config.precision == "bf16" else None
        trainer = _Trainer(pipe, request, config, unet, _frozen_view(unet, tuned, lora, copy_dtype))
        optimizer = torch.optim.Adam(tuned.parameters, lr=lr)
        state = {"pool": None, "losses": []}
        streaming = config.schedule == "stream"
        state_cls = _Stream if streaming else _Pool
        start = 0
        if inputs.resume:
            saved = load_checkpoint(inputs.checkpoint, run_config, "esd")
            with torch.no_grad():
                for p, value in zip(tuned.parameters, saved["trained"], strict=True):
                    p.copy_(value)
            optimizer.load_state_dict(saved["optimizer"])
            if saved["pool"]:  # checkpoints load on the CPU
                state["pool"] = state_cls(**{k: v.to(trainer.device) for k, v in saved["pool"].items()})
            trainer.frozen_calls = saved["frozen_calls"]
            state["losses"] = list(saved["losses"])
            start = saved["step"]
            if start > iterations:
                raise ValueError(f"the checkpoint is at iteration {start}, past --iterations {iterations}")
            log.info("resumed ESD from %s at iteration %d", inputs.checkpoint, start)

        def step_fn(step: int) -> dict[str, float]:
            if streaming:
                if state["pool"] is None:
                    state["pool"] = trainer.start_stream(seed)
                batch, frozen_eps = trainer.stream_batch(state["pool"])
            elif config.schedule == "official":
                batch = trainer.official_samples(seed, step)
            else:
                if state["pool"] is None or step % config.refresh_every == 0:
                    state["pool"] = trainer.sample_pool(seed, step // config.refresh_every)
                pool = state["pool"]
                rng = step_rng(seed, step, 0)
                size = len(pool.latents)
                pick = torch.as_tensor(rng.choice(size, min(config.batch_size, size), replace=False))
                batch = _Pool(*(getattr(pool, f.name)[pick.to(pool.latents.device)] for f in dataclasses.fields(pool)))
            optimizer.zero_grad(set_to_none=True)
            pred = trainer.predict(batch)
            loss = torch.nn.functional.mse_loss(pred, batch.targets)
            loss.backward()
            if streaming:  # before the update: the step is drawn with this iteration's weights
                eps_c, eps_u = frozen_eps if frozen_eps is not None else (pred.detach(), None)
                trainer.advance_stream(state["pool"], batch, eps_c, eps_u, seed)
            optimizer.step()
            state["losses"].append(loss.item())
            return {"loss": state["losses"][-1]}

        def save_fn(step: int) -> None:
            if inputs.checkpoint is None:
                return
            pool = state["pool"].state_dict() if state["pool"] is not None else None
            trained = [p.detach() for p in tuned.parameters]
            save_checkpoint(inputs.checkpoint, step, run_config, kind="esd", trained=trained,
                            optimizer=optimizer.state_dict(),
                            pool=pool, losses=state["losses"], frozen_calls=trainer.frozen_calls)  # fmt: skip

        checkpointing = unet.is_gradient_checkpointing
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        try:
            run_steps(total=iterations, start=start, step_fn=step_fn, save_fn=save_fn,
                      every=inputs.checkpoint_every, desc="esd", progress=progress,
                      checkpointing=inputs.checkpoint is not None, checkpoint_file=inputs.checkpoint,
                      diverged_hint="; lower --lr, --eta or --sampling-guidance")  # fmt: skip
        finally:
            if config.gradient_checkpointing and not checkpointing:
                unet.disable_gradient_checkpointing()
            # before trainable() builds the edit (a float32 delta per trained tensor): let go of the optimiser's
            # moments, the gradients, the frozen copy and the pool, so the deltas do not come on top of them
            optimizer.state.clear()
            for p in tuned.parameters:
                p.grad = None
            trainer.frozen.clear()
            state["pool"] = None
    log.info("esd: %d iterations in %.1f s", iterations, time.perf_counter() - started)
    losses = state["losses"]
    tail = losses[-max(1, len(losses) // 10) :]
    stats = {
        "iterations": iterations,
        "lr": lr,
        "final_loss": sum(tail) / len(tail),
        "frozen_unet_rows": trainer.frozen_calls,
        "trained_parameters": len(keys),
    }
    return tuned.edit(method="esd", config=dataclasses.asdict(config), request=request.to_dict(), seed=seed,
                      stats=stats)  # fmt: skip
