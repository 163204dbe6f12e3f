"""Selective Amnesia (SA; Heng & Soh, NeurIPS 2023, paper 004): controllable forgetting by continual learning.

Maximise (eq. 4)

    E_{q(x|c_f)} ELBO(x | theta, c_f) - lambda sum_i F_i / 2 (theta_i - theta*_i)^2 + E_{p(x|c_r)} ELBO(x | theta, c_r)

* q(x|c_f), the surrogate (section 3.2): `surrogate` = "uniform" (pixels U[0, 1], the paper's choice for
  MNIST/CIFAR, and the default on the digits models), a prompt (a class name for the digits models) whose
  images the original model draws, so that c_f is remapped to it (the paper's SD runs: "a middle aged man",
  "a person wearing clothes"; "a square" on ShapesSD). On a text-to-image model the surrogate is required
  (`--surrogate`, or the request's `--guide`, the anchor every method takes), as the paper's SD runs always
  name one: no generic choice forgot on ShapesSD's tuning seeds (training seeds 5000/5001): the empty prompt
  and the replay samples as surrogate left "circle" in 16/16 images, and uniform noise forgot it at seed 5000
  but at seed 0 left it in 16/16 while costing the other objects 10 points (README "Selective Amnesia");
* F, the diagonal Fisher of the original model (`concept_edit.methods.amnesia.fisher`), on samples it generates: for
  the replay prompts on a text-to-image model (the paper's SD runs use one generated set for both), for every
  class on the digits models (the official `calculate_fim.py` draws c uniformly over the 10 classes);
* generative replay (the last term): the training loss on the original model's samples for the replay
  prompts (the request's `preserve` list; on ShapesSD by default captions of its training distribution that
  do not name the concept) or for every class but the forgotten ones;
* trained parameters: `all`, `x` (cross-attention) or `u` (everything else, the paper's choice for nudity).

As the official code does (clear-nus/selective-amnesia): the ELBO terms are the models' training losses (the
negative ELBO of the VAE summed over the batch; L_simple of a diffusion model averaged over the batch, at a
uniform random timestep, averaged over pixels on SD as `ddpm_forget.py` and summed over pixels on the digits
DDPM as the official CIFAR loss; the digits DDPM's Fisher sees the null class on 10% of timesteps, as the
official class dropout does there), the replay term is weighted by `gamma` (1 in the paper; 0 is the "no GR" ablation
of Table 1), and the penalty is lambda sum_i F_i (theta_i - theta*_i)^2, the 1/2 absorbed into lambda, so the
official lambda values carry over: VAE 100, SD 50 (the defaults); DDPM 10, which on the digits DDPM does not
let it forget at all, so its default is 0.3 (the digits world's `AMNESIA`). Adam is used for
every model (the official SD trainer uses AdamW with weight decay 0.01, negligible at lr 1e-5).

Not reproduced: the official trainers' EMA and gradient clipping; forget and replay rows draw independent
timesteps (the official DDPM code shares antithetic ones); the digits DDPM draws its Fisher samples apart from
its replay samples (the official code uses one stored set). Generated samples are not checkpointed: resume
redraws them from the seed (identical on the CPU; GPU sampling may differ in the last bits).

Faster than the official code, same objective:
* the Fisher batches the timesteps of each sample (see `amnesia.fisher`; `fisher_timesteps` subsamples them)
  and is cached as safetensors keyed by the hash of the model's weights and its settings (`--fisher`);
* the EWC state (F and theta*) lives on the training device and its gradient is added in closed form, one
  tensor at a time (`amnesia.ewc`); theta* is `trainable()`'s kept copy of the original weights, not another;
* `--step-in-backward` steps Adam on each tensor as soon as backward completes its gradient (adding the EWC
  gradient first) and drops that gradient: the same update without a full set of gradients (`step_in_backward`);
* forget and replay rows go through the model in one batch;
* surrogate and replay samples are drawn once, as latents (a text-to-image model's sampler gives latents, so
  nothing is decoded and re-encoded; a uniform surrogate is encoded once). The official SD code decodes its
  generated images to files and encodes them again at every step; the VAE redraws replay from a frozen copy
  at every step, which `replay_samples` approximates with a large pool (50000 by default).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from concept_edit.edit import trainable
from concept_edit.edit.state import combine, current_digest, named_tensors
from concept_edit.io import kept_on_full_disk, save_tensors
from concept_edit.methods.amnesia.adversarial import AdversarialPrompts, check_adversarial
from concept_edit.methods.amnesia.backends import Data, backend_for
from concept_edit.methods.amnesia.config import AmnesiaConfig, AmnesiaInputs  # noqa: F401
from concept_edit.methods.amnesia.ewc import EWCPenalty
from concept_edit.methods.amnesia.fisher import (
    diffusion_squared_gradient,
    estimate_fisher,
    fisher_timesteps,
    vae_squared_gradients,
)
from concept_edit.methods.registry import EditRequest, _norm, register
from concept_edit.models.conditioning import Conditions, encode_conditions
from concept_edit.models.loading import model_info
from concept_edit.processes import Group, check_device, process_group, share
from concept_edit.step_in_backward import StepInBackward
from concept_edit.stopping import Interrupted, Terminated
from concept_edit.training import (
    Diverged,
    check_checkpoint,
    load_checkpoint,
    run_steps,
    save_checkpoint,
    step_generator,
)
from concept_edit.worlds import world_of

log = logging.getLogger(__name__)
FISHER_FORMAT = "concept-edit-amnesia-fisher/1"


# -- what is forgotten, replayed and remapped ----------------------------------------------------------------
def _digit_class(pipe, name: str, what: str) -> int:
    classes = list(pipe.classes)
    if name not in classes:
        raise ValueError(f"{what} {name!r} is not a class of {model_info(pipe).spec}; classes: {', '.join(classes)}")
    return classes.index(name)


@dataclass
class _Plan:
    """Conditions and samples: forget rows, replay data, surrogate data (None: fresh uniform per step)."""

    cond: object
    forget_rows: torch.Tensor
    replay: Data
    fisher: Data
    surrogate: Data | None
    replay_texts: list[str]  # what the replay and the Fisher samples were drawn for (prompts or classes)
    concept: torch.Tensor | None = None  # the concept's latents by the original model (the inner attack's data)


def _bare(text: str) -> str:
    """A phrase without its leading article: "a cat" and "Cat" name the same concept."""
    words = _norm(text).split()
    return " ".join(words[1:] if len(words) > 1 and words[0] in ("a", "an", "the") else words)


def _plan(pipe, backend_factory, request: EditRequest, values: dict, seed: int, progress: bool):
    surrogate = values["surrogate"]
    if _bare(surrogate) in {_bare(c) for c in request.concepts}:
        raise ValueError(f"the surrogate {surrogate!r} is the concept being forgotten; pick a different surrogate")
    uniform = surrogate.strip().lower() == "uniform"
    world = world_of(pipe)
    class_conditional = not world.text_to_image
    if class_conditional:
        forget = [_digit_class(pipe, c, "concept") for c in request.concepts]
        if request.preserve:
            replay_classes = [_digit_class(pipe, c, "replay class") for c in request.preserve]
        else:
            replay_classes = [k for k in range(len(pipe.classes)) if k not in forget]
        if not replay_classes:
            raise ValueError("the replay set is empty: every class is being forgotten; keep at least one")
        target = None if uniform else _digit_class(pipe, surrogate, "surrogate")
        backend = backend_factory(None)
        n_classes = len(pipe.classes)
        fisher_rows = torch.arange(values["fisher_samples"]) % n_classes  # p(c) uniform over all classes
        replay_rows = torch.tensor(replay_classes)[torch.arange(values["replay_samples"]) % len(replay_classes)]
        rows = {"forget": torch.tensor(forget), "fisher": fisher_rows, "replay": replay_rows}
        surrogate_rows = None if uniform else torch.full((values["surrogate_samples"],), target)
        replay_texts = [pipe.classes[k] for k in replay_classes]
    else:
        prompts = list(request.preserve) or world.replay_prompts(request.concepts, 64, seed)
        if not prompts:
            raise ValueError(
                "Selective Amnesia replays what the model must keep: give the replay prompts with --preserve "
                "(or --preserve-file); the paper uses a few thousand varied prompts"
            )
        texts = ["", *request.concepts, *prompts] + ([] if uniform else [surrogate])
        cond = encode_conditions(pipe, texts)
        backend = backend_factory(cond)
        first = 1 + len(request.concepts)
        replay_rows = first + torch.arange(values["replay_samples"]) % len(prompts)
        rows = {
            "forget": torch.arange(1, first),
            "replay": replay_rows,
            "fisher": replay_rows[: values["fisher_samples"]],
        }
        surrogate_rows = None if uniform else torch.full((values["surrogate_samples"],), len(texts) - 1)
        replay_texts = prompts
    replay = Data(backend.generate(rows["replay"], seed, 31, progress=progress), rows["replay"].to(backend.device))
    if class_conditional:
        fisher = Data(backend.generate(rows["fisher"], seed, 32, progress=progress), rows["fisher"].to(backend.device))
    else:  # the paper's SD runs: one generated set for the Fisher and the replay
        fisher = replay.take(torch.arange(min(values["fisher_samples"], len(replay))))
    surrogate_data = None
    if surrogate_rows is not None:
        x = backend.generate(surrogate_rows, seed, 33, progress=progress)
        surrogate_data = Data(x, surrogate_rows.to(backend.device))
    elif backend.kind == "text-to-image":  # uniform noise images, encoded once
        n = values["surrogate_samples"]
        surrogate_data = Data(backend.uniform(n, step_generator(seed, 0, 34)), torch.zeros(n, dtype=torch.long))
    concept = None
    if values["adversarial_steps"] > 0:  # rows cycle over the concepts (`AdversarialPrompts.concept_of`)
        concept_rows = rows["forget"][torch.arange(values["concept_samples"]) % len(rows["forget"])]
        concept = backend.generate(concept_rows, seed, 35, progress=progress)
    return backend, _Plan(getattr(backend, "cond", None), rows["forget"].to(backend.device), replay, fisher,
                          surrogate_data, replay_texts, concept)  # fmt: skip


# -- Fisher: estimate, cache, reuse ---------------------------------------------------------------------------
def _fisher_settings(values: dict, plan: _Plan, seed: int) -> dict:
    """Everything F depends on besides the weights: which samples (drawn for which prompts or classes, how)
    and how each sample's gradient is estimated. Not the forgotten concepts: one Fisher serves many edits."""
    keys = ("parameters", "fisher_samples", "fisher_timesteps", "replay_samples", "sampling_steps",
            "sampling_guidance")  # fmt: skip
    texts = hashlib.sha256(json.dumps(plan.replay_texts).encode()).hexdigest()
    return {"options": {k: values[k] for k in keys}, "replay_texts_sha256": texts, "seed": seed}


def _fisher_file(location: Path | None, base_hash: str, settings: dict) -> Path | None:
    if location is None:
        return None
    location = Path(location)
    if location.is_dir() or location.suffix != ".safetensors":
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        return location / f"fisher-{base_hash[:16]}-{key}.safetensors"
    return location


def _fisher_header(path: Path) -> dict:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("amnesia", "null"))
    except (SafetensorError, OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--fisher: cannot read {path}: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FISHER_FORMAT:
        raise ValueError(f"--fisher: {path} is not a Selective Amnesia Fisher file")
    return meta


def check_fisher_owner(path: Path, base_hash: str) -> None:
    """Refuse, before anything is sampled, a Fisher file estimated on another model's weights."""
    meta = _fisher_header(path)
    if meta["base_hash"] != base_hash:
        raise ValueError(
            f"--fisher: {path} is the Fisher of another model ({meta.get('base_model')}, or other weights); "
            "give another file or folder to estimate this model's"
        )


def load_fisher(path: Path, names: list[str], base_hash: str, settings: dict) -> list[torch.Tensor]:
    """A cached Fisher, refused unless it was estimated on these weights with these settings."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("amnesia", "null"))
            if not isinstance(meta, dict) or meta.get("format") != FISHER_FORMAT:
                raise ValueError(f"--fisher: {path} is not a Selective Amnesia Fisher file")
            if meta["base_hash"] != base_hash:
                raise ValueError(f"--fisher: {path} is the Fisher of another model ({meta.get('base_model')})")
            if meta["settings"] != json.loads(json.dumps(settings)):
                raise ValueError(f"--fisher: {path} was estimated with other settings {meta['settings']}")
            missing = [n for n in names if n not in handle.keys()]  # noqa: SIM118 - safe_open API
            if missing:
                raise ValueError(f"--fisher: {path} has no entry for {missing[0]}")
            fisher = [handle.get_tensor(n) for n in names]
    except (SafetensorError, OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--fisher: cannot read {path}: {err}") from None
    for name, f in zip(names, fisher, strict=True):  # a Fisher is a mean of squares: finite and >= 0
        if not bool(torch.isfinite(f).all()) or bool((f < 0).any()):
            raise ValueError(
                f"--fisher: {path} holds {'non-finite' if not bool(torch.isfinite(f).all()) else 'negative'} values "
                f"(in {name}): it is damaged; delete it to estimate the Fisher again"
            )
    return fisher


def save_fisher(path: Path, names: list[str], fisher: list[torch.Tensor], base_hash: str, settings: dict,
                base_model: str) -> None:  # fmt: skip
    meta = {"format": FISHER_FORMAT, "base_hash": base_hash, "settings": settings, "base_model": base_model}
    tensors = {n: f.detach().cpu() for n, f in zip(names, fisher, strict=True)}
    save_tensors(path, tensors, metadata={"amnesia": json.dumps(meta)})


def fisher_checkpoint(checkpoint: Path) -> Path:
    """Where a run with `checkpoint` keeps its partial Fisher estimate (kind "amnesia-fisher")."""
    return checkpoint.with_name(checkpoint.stem + ".fisher.safetensors")


VAE_FISHER_BATCH = 256  # the VAE's samples per Fisher step (one vectorised pass)


def fisher_steps(backend, samples: int) -> int:
    """The Fisher's steps, its units of work: one per sample of a diffusion model, one per batch of the VAE."""
    return samples if backend.diffusion else -(-samples // VAE_FISHER_BATCH)


def _fisher_step_count(pipe, values: dict, sampling: dict) -> int:
    """How many Fisher steps `_plan`'s samples give, known before any is drawn: on a text-to-image model the
    first fisher_samples of the replay samples, on the digits models fisher_samples of their own."""
    if world_of(pipe).text_to_image:
        return min(values["fisher_samples"], values["replay_samples"])
    return fisher_steps(backend_for(pipe, None, **sampling), values["fisher_samples"])


def fisher_of(backend, params, data: Data, values: dict, seed: int, *, checkpoint=None, run_config=None,
              resume=False, progress=True, group: Group | None = None) -> list[torch.Tensor]:  # fmt: skip
    """The diagonal Fisher of the current weights on `data` (one squared per-sample gradient each).

    Under `accelerate launch` with several processes (or `group`), each process computes its share of the
    steps and the sums are added across them once (`fisher.estimate_fisher`).
    """
    n = len(data)
    if backend.diffusion:

        def squared(step: int) -> list[torch.Tensor]:
            gen = step_generator(seed, step, 41)
            t, scale = fisher_timesteps(backend.num_timesteps, values["fisher_timesteps"], gen)
            x0 = data.x[step : step + 1]
            noise = backend.noise_for(x0, len(t), gen)
            rows = data.rows[step : step + 1].expand(len(t)).clone()
            if getattr(backend, "null_row", None) is not None:  # the official class dropout (digits DDPM)
                rows[(torch.rand(len(t), generator=gen) < backend.null_share).to(rows.device)] = backend.null_row
            return diffusion_squared_gradient(params, backend.loss, x0, rows, t, noise, scale=scale,
                                              chunk=values["fisher_chunk"])  # fmt: skip

    else:  # the VAE: one ELBO per sample; per-sample gradients of a batch in one vectorised pass
        batch = VAE_FISHER_BATCH

        def squared(step: int) -> list[torch.Tensor]:
            part = data.take(torch.arange(step * batch, min(n, (step + 1) * batch)))
            noise = torch.randn((len(part), backend.latent_dim), generator=step_generator(seed, step, 41))
            return vae_squared_gradients(backend.vae, params, part.x, part.rows, noise.to(backend.device))

    return estimate_fisher(params, steps=fisher_steps(backend, n), squared_gradients=squared, count=n,
                           checkpoint=checkpoint, run_config=run_config, resume=resume, progress=progress,
                           group=group)  # fmt: skip


# -- the method ------------------------------------------------------------------------------------------------
def _check(pipe, request: EditRequest, values: dict) -> None:
    class_conditional = not world_of(pipe).text_to_image
    if request.guides:
        raise ValueError("Selective Amnesia remaps every concept to one surrogate: give one --guide (or --surrogate)")
    if request.guide is not None:
        if class_conditional:
            raise ValueError("on the digits models the surrogate is a class or 'uniform': give it with --surrogate")
        if values["surrogate_given"]:
            raise ValueError("--guide and --surrogate both name the surrogate: give one")
        values["surrogate"] = request.guide
    if values["surrogate"] is None:
        raise ValueError(
            "Selective Amnesia on a text-to-image model needs a surrogate, what the concept is remapped to: "
            "--surrogate PROMPT or --guide PROMPT (the paper's SD runs: 'a middle aged man' for a celebrity, "
            "'a person wearing clothes' for nudity), or --surrogate uniform (noise, the paper's MNIST/CIFAR choice)"
        )
    if class_conditional:
        if values["parameters"] != "all":
            raise ValueError("the digits models have no cross-attention: use --parameters all")
        if pipe.dtype != torch.float32:
            raise ValueError(f"Selective Amnesia trains the digits models in float32, not {pipe.dtype}")
    elif pipe.unet.dtype != torch.float32:
        raise ValueError(
            f"Selective Amnesia fine-tunes float32 master weights, but the model is loaded in {pipe.unet.dtype}; "
            "load it in float32 (--dtype float32)"
        )
    check_adversarial(pipe, values, not class_conditional, list(request.concepts))


def _train(optimizer, load_saved, run) -> None:
    """Load a checkpoint and run the steps; then let go of the optimiser's moments (and the in-backward hooks)
    before the edit's deltas are built, on every way out: hooks left behind would step on any later backward
    through these weights."""
    try:
        load_saved()
        run()
    finally:
        if isinstance(optimizer, StepInBackward):
            optimizer.close()
        else:
            optimizer.state.clear()


@register("amnesia")
def fit_amnesia(pipe, request: EditRequest, config: AmnesiaConfig, inputs: AmnesiaInputs, *, seed: int = 0,
                progress: bool = True):  # fmt: skip
    """Train Selective Amnesia on `pipe` to forget `request.concepts` and return the change as an `Edit`.

    Under `accelerate launch` with several processes the Fisher is split across them (`fisher.estimate_fisher`);
    the samples and the training run in every process alike (the Fisher is the same in all), and only the
    main process shows progress and writes the Fisher cache (the caller writes the edit from it alone).
    Checkpoints are refused with several processes.
    """
    values = {**config.resolved(pipe), "surrogate_given": config.surrogate is not None}
    _check(pipe, request, values)
    del values["surrogate_given"]
    group = process_group()
    if group.count > 1 and (inputs.checkpoint is not None or inputs.resume):
        raise ValueError(
            f"amnesia: checkpoints (and --resume) work with one process only; with {group.count} processes leave "
            "--checkpoint and --resume out"
        )
    check_device(group, pipe.device)
    sampling = {"steps": values["sampling_steps"], "guidance": values["sampling_guidance"]}
    if group.count > 1:  # more processes than Fisher steps: refused before any hash or sample
        share(_fisher_step_count(pipe, values, sampling), group, "Fisher sample steps")
    progress = progress and group.main
    checkpoint = Path(inputs.checkpoint) if inputs.checkpoint is not None else None
    fisher_partial = fisher_checkpoint(checkpoint) if checkpoint else None
    if inputs.resume and (checkpoint is None or not (checkpoint.exists() or fisher_partial.exists())):
        raise ValueError(f"--resume: there is no checkpoint at {inputs.checkpoint}")
    started = time.perf_counter()
    # the Fisher depends on every weight (text encoder and frozen UNet parts included), not only the trained ones;
    # hashed only when a cache or a checkpoint must be matched to the model (a billion weights on SD)
    needs_hash = inputs.fisher is not None or checkpoint is not None
    base_hash = combine({k: current_digest(pipe, k, t) for k, t in named_tensors(pipe).items()}) if needs_hash else ""
    if inputs.fisher is not None and Path(inputs.fisher).is_file():
        check_fisher_owner(Path(inputs.fisher), base_hash)
    # how Adam is stepped does not change the run: a checkpoint of either way resumes in the other
    same_run = {k: v for k, v in values.items() if k != "step_in_backward"}
    run_config = {"config": same_run, "request": request.to_dict(), "seed": seed, "base_hash": base_hash}
    if inputs.resume:  # before the Fisher or any sample: the files are this run's checkpoints
        if checkpoint.exists():
            check_checkpoint(checkpoint, "amnesia", run_config)
        if fisher_partial.exists():
            check_checkpoint(fisher_partial, "amnesia-fisher")
    backend, plan = _plan(pipe, lambda cond: backend_for(pipe, cond, **sampling), request, values, seed, progress)
    keys = backend.parameter_names(values["parameters"])
    settings = _fisher_settings(values, plan, seed)
    cache = _fisher_file(inputs.fisher, base_hash, settings)
    with trainable(pipe, keys) as tuned:
        params = tuned.parameters
        if cache is not None and cache.exists():
            fisher = [f.to(p.device) for f, p in zip(load_fisher(cache, keys, base_hash, settings), params,
                                                      strict=True)]  # fmt: skip
            log.info("amnesia: Fisher from %s", cache)
        else:
            fisher = fisher_of(backend, params, plan.fisher, values, seed, checkpoint=fisher_partial,
                               run_config={**settings, "base_hash": base_hash}, resume=inputs.resume,
                               progress=progress, group=group)  # fmt: skip
            if cache is not None and group.main:
                with kept_on_full_disk(cache, fisher_partial, "the Fisher estimate"):
                    save_fisher(cache, keys, fisher, base_hash, settings, model_info(pipe).spec)
        # theta* is the original weights: trainable()'s kept copy where it can be (not another copy of the UNet)
        penalty = EWCPenalty(params, fisher, values["lam"], anchors=[tuned.original(p, torch.float32) for p in params])
        if config.step_in_backward:  # the EWC gradient and Adam's step per tensor as backward completes it
            before = (lambda index, _: penalty.add_gradient_of_(index)) if values["lam"] > 0 else None
            optimizer = StepInBackward(params, lambda one: torch.optim.Adam(one, lr=values["lr"]), before)
        else:
            optimizer = torch.optim.Adam(params, lr=values["lr"])
        state = {"losses": [], "start": 0, "attack_losses": []}
        adversary = None
        if values["adversarial_steps"] > 0:
            adversary = AdversarialPrompts(pipe, backend, list(request.concepts), plan.concept, values)

        def load_saved() -> None:  # inside _train: a checkpoint that fails to load must not leave hooks behind
            if inputs.resume and checkpoint.exists():
                saved = load_checkpoint(checkpoint, run_config, "amnesia")
                with torch.no_grad():
                    for p, v in zip(params, saved["trained"], strict=True):
                        p.copy_(v)
                optimizer.load_state_dict(saved["optimizer"])
                state.update(losses=list(saved["losses"]), start=saved["step"])
                if adversary is not None:
                    state["attack_losses"] = list(saved["attack_losses"])
                    delta = saved["delta"]  # read on the CPU: the attack runs where the model is
                    adversary.set_delta(delta.to(pipe.device) if delta is not None else None)

        batch = values["batch_size"]

        def step_fn(step: int) -> dict[str, float]:
            gen = step_generator(seed, step, 0)
            pick = torch.randint(len(plan.forget_rows), (batch,), generator=gen).to(plan.forget_rows.device)
            forget_rows = plan.forget_rows[pick]
            if plan.surrogate is None:
                forget_x = backend.uniform(batch, gen)
            else:
                forget_x = plan.surrogate.take(torch.randint(len(plan.surrogate), (batch,), generator=gen)).x
            parts = [Data(forget_x, forget_rows)]
            if values["gamma"] > 0:
                parts.append(plan.replay.take(torch.randint(len(plan.replay), (batch,), generator=gen)))
            rows = Data.cat(parts)
            t, noise = backend.draw(rows.x, gen)
            shown, adversarial_losses = {}, None
            if adversary is not None and step >= values["adversarial_warmup"]:
                if (step - values["adversarial_warmup"]) % values["attack_every"] == 0:
                    state["attack_losses"].append(adversary.attack(seed, step))
                shown["attack"] = state["attack_losses"][-1]
                # `batch` more forget rows, on [delta, concept], from their own stream (the plain rows stay SA's)
                agen = step_generator(seed, step, 53)
                concept = torch.randint(len(plan.forget_rows), (batch,), generator=agen)
                adv_x = plan.surrogate.take(torch.randint(len(plan.surrogate), (batch,), generator=agen)).x
                adv_t, adv_noise = backend.draw(adv_x, agen)
                cond = Conditions.cat([plan.cond.take(rows.rows), adversary.conditions(concept)])
                losses = backend.loss_given(torch.cat([rows.x, adv_x]), cond, torch.cat([t, adv_t]),
                                            torch.cat([noise, adv_noise]))  # fmt: skip
                losses, adversarial_losses = losses[: len(rows.x)], losses[len(rows.x) :]
            else:
                losses = backend.loss(rows.x, rows.rows, t, noise)
            reduce = torch.mean if backend.reduction == "mean" else torch.sum
            forget_loss = reduce(losses[:batch])
            loss = forget_loss + values["gamma"] * reduce(losses[batch:]) if values["gamma"] > 0 else forget_loss
            if adversarial_losses is not None:
                shown["adversarial"] = reduce(adversarial_losses).item()
                loss = loss + values["adversarial_weight"] * reduce(adversarial_losses)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.step_in_backward:
                optimizer.finish()
            else:
                penalty.add_gradient_()
                optimizer.step()
            state["losses"].append(loss.item())
            return {"loss": state["losses"][-1], "forget": forget_loss.item(), **shown}

        def save_fn(step: int) -> None:
            if checkpoint is None:
                return
            adversarial = {}
            if adversary is not None:
                adversarial = {"delta": adversary.delta, "attack_losses": state["attack_losses"]}
            save_checkpoint(checkpoint, step, run_config, kind="amnesia", trained=[p.detach() for p in params],
                            optimizer=optimizer.state_dict(), losses=state["losses"], **adversarial)  # fmt: skip

        try:
            _train(optimizer, load_saved, lambda: run_steps(
                total=values["steps"], start=state["start"], step_fn=step_fn, save_fn=save_fn,
                every=inputs.checkpoint_every, desc="amnesia", progress=progress,
                checkpointing=checkpoint is not None, checkpoint_file=checkpoint,
                diverged_hint="; lower --lr (or --lam)"))  # fmt: skip
        except Diverged as err:  # the Fisher is sound (it is checked); only the training diverged
            if fisher_partial is None or not fisher_partial.exists():
                raise
            raise Diverged(f"{err}; the Fisher estimate is kept at {fisher_partial}: the corrected run reuses it "
                           "with --resume") from None  # fmt: skip
        except (KeyboardInterrupt, Terminated) as stop:  # stopped before the first training checkpoint
            if fisher_partial is None or not fisher_partial.exists():
                raise
            what, status = ("terminated", 143) if isinstance(stop, Terminated) else ("interrupted", 130)
            raise Interrupted(
                f"amnesia: {what} before the first training checkpoint; the Fisher estimate is kept at "
                f"{fisher_partial}: run the same command with --resume to reuse it",
                status,
            ) from None
        ewc_value = penalty.value()
    if fisher_partial is not None:
        fisher_partial.unlink(missing_ok=True)
    losses = state["losses"]
    tail = losses[-max(1, len(losses) // 10) :]
    stats = {
        "iterations": values["steps"],
        "final_loss": sum(tail) / len(tail),
        "ewc_penalty": ewc_value,
        "fisher_mean": float(sum(f.sum() for f in fisher) / sum(f.numel() for f in fisher)),
        "trained_parameters": len(keys),
    }
    if values["adversarial_steps"] > 0:
        tail_attack = state["attack_losses"][-max(1, len(state["attack_losses"]) // 10) :]
        stats.update(attacks=len(state["attack_losses"]), final_attack_loss=sum(tail_attack) / len(tail_attack))
    log.info("amnesia: %d steps in %.1f s", values["steps"], time.perf_counter() - started)
    request_dict = request.to_dict()
    return tuned.edit(method="amnesia", config={**dataclasses.asdict(config), "resolved": values},
                      request=request_dict, seed=seed, stats=stats)  # fmt: skip
