"""Selective Amnesia (SA; Heng & Soh, NeurIPS 2023, paper 004): controllable forgetting by continual learning.

Maximise (eq. 4)

    E_{q(x|c_f)} ELBO(x | theta, c_f) - lambda sum_i F_i / 2 (theta_i - theta*_i)^2 + E_{p(x|c_r)} ELBO(x | theta, c_r)

* q(x|c_f), the surrogate (section 3.2): `surrogate` = "uniform" (pixels U[0, 1], the paper's choice for
  MNIST/CIFAR), or a prompt (a class name for the digits models) whose images the original model draws, so
  that c_f is remapped to it ("a middle aged man" in the paper, "a square" on ShapesSD);
* F, the diagonal Fisher of the original model (`concept_edit.amnesia.fisher`), on samples it generates: for
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
let it forget at all, so its default is 0.3 (see DEFAULTS). Adam is used for
every model (the official SD trainer uses AdamW with weight decay 0.01, negligible at lr 1e-5).

Not reproduced: the official trainers' EMA and gradient clipping; forget and replay rows draw independent
timesteps (the official DDPM code shares antithetic ones); the digits DDPM draws its Fisher samples apart from
its replay samples (the official code uses one stored set). Generated samples are not checkpointed: resume
redraws them from the seed (identical on the CPU; GPU sampling may differ in the last bits).

Faster than the official code, same objective:
* the Fisher batches the timesteps of each sample (see `amnesia.fisher`; `fisher_timesteps` subsamples them)
  and is cached as safetensors keyed by the hash of the model's weights and its settings (`--fisher`);
* the EWC state (F and theta*) lives on the training device and its gradient is added in closed form with
  fused foreach operations (`amnesia.ewc`);
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
from dataclasses import dataclass, field
from pathlib import Path

import torch

from concept_edit.amnesia.ewc import EWCPenalty
from concept_edit.amnesia.fisher import (
    diffusion_squared_gradient,
    estimate_fisher,
    fisher_timesteps,
    vae_squared_gradients,
)
from concept_edit.amnesia.models import GROUPS, Data, backend_for
from concept_edit.edit import trainable
from concept_edit.edit.state import combine, current_digest, named_tensors
from concept_edit.io import atomic_path
from concept_edit.methods.registry import EditRequest, _norm, input_field, register
from concept_edit.models.conditioning import encode_conditions
from concept_edit.models.loading import model_info
from concept_edit.training import load_checkpoint, run_steps, save_checkpoint, step_generator
from concept_edit.validation import check_choice, check_fields

log = logging.getLogger(__name__)
FISHER_FORMAT = "concept-edit-amnesia-fisher/1"

# per kind of model: the official values (appendix B) where they fit this CPU, else set on tuning seeds 5000+
DEFAULTS = {
    "vae": {"lam": 100.0, "lr": 1e-4, "batch_size": 256, "steps": 10000, "fisher_samples": 50000,
            "replay_samples": 50000, "surrogate_samples": 1000, "fisher_timesteps": None, "fisher_chunk": 250},
    # the digits DDPM at the official lambda 10 (and 2000 steps at lr 1e-4) does not forget at all (P("0") stays
    # 1.000, benchmarks/results/amnesia_quality_ddpm_official.json); lambda 0.3 is the strongest of 0.01-10
    # that still forgets on training seed 5000 and probe seeds 5000+ (1: P 0.60; 10: 1.00)
    "ddpm": {"lam": 0.3, "lr": 1e-3, "batch_size": 128, "steps": 300, "fisher_samples": 500,
             "replay_samples": 2000, "surrogate_samples": 1000, "fisher_timesteps": 50, "fisher_chunk": 250},
    "text-to-image": {"lam": 50.0, "lr": 1e-5, "batch_size": 4, "steps": 1000, "fisher_samples": 5000,
                      "replay_samples": 5000, "surrogate_samples": 1000, "fisher_timesteps": None,
                      "fisher_chunk": 25},
    "shapes": {"lam": 50.0, "lr": 3e-3, "batch_size": 8, "steps": 300, "fisher_samples": 32,
               "replay_samples": 64, "surrogate_samples": 32, "fisher_timesteps": 50, "fisher_chunk": 250},
}  # fmt: skip


@dataclass(frozen=True)
class AmnesiaConfig:
    surrogate: str = field(
        default="uniform", metadata={"help": "what the concept is remapped to: 'uniform' noise, or a prompt/class"}
    )
    lam: float | None = field(
        default=None, metadata={"help": "EWC weight lambda (default: VAE 100, SD 50 as official; digits DDPM 0.3)"}
    )
    gamma: float = field(default=1.0, metadata={"help": "generative replay weight (0: no replay, the ablation)"})
    steps: int | None = field(default=None, metadata={"help": "optimizer steps (default: per model)"})
    lr: float | None = field(default=None, metadata={"help": "Adam learning rate (default: per model)"})
    batch_size: int | None = field(
        default=None, metadata={"help": "forget rows, and as many replay rows, per step (default: per model)"}
    )
    parameters: str = field(default="all", metadata={"help": "trained group: all | x (cross-attn) | u (the rest)"})
    fisher_samples: int | None = field(
        default=None, metadata={"help": "samples the Fisher averages (default: per model)"}
    )
    fisher_timesteps: int | None = field(
        default=None,
        metadata={"help": "timesteps per Fisher sample, stratified (default: all T as official; ShapesSD 50)"},
    )
    fisher_chunk: int | None = field(
        default=None, metadata={"help": "timesteps per Fisher forward/backward (default: SD 25, else 250)"}
    )
    replay_samples: int | None = field(default=None, metadata={"help": "replay pool size (default: per model)"})
    surrogate_samples: int | None = field(
        default=None, metadata={"help": "surrogate images drawn once (default: per model; digits: fresh each step)"}
    )
    sampling_steps: int | None = field(default=None, metadata={"help": "DDIM steps of generated samples"})
    sampling_guidance: float | None = field(default=None, metadata={"help": "guidance of generated samples"})

    def __post_init__(self) -> None:
        if not isinstance(self.surrogate, str) or not self.surrogate.strip():
            raise ValueError("surrogate must be 'uniform' or a prompt/class, got an empty text")
        check_fields(
            self,
            {
                "lam": {"low": 0, "optional": True},
                "gamma": {"low": 0},
                "steps": {"low": 1, "integer": True, "optional": True},
                "lr": {"low": 0, "low_open": True, "optional": True},
                "batch_size": {"low": 1, "integer": True, "optional": True},
                "fisher_samples": {"low": 1, "integer": True, "optional": True},
                "fisher_timesteps": {"low": 1, "integer": True, "optional": True},
                "fisher_chunk": {"low": 1, "integer": True, "optional": True},
                "replay_samples": {"low": 1, "integer": True, "optional": True},
                "surrogate_samples": {"low": 1, "integer": True, "optional": True},
                "sampling_steps": {"low": 1, "integer": True, "optional": True},
                "sampling_guidance": {"low": 0, "optional": True},
            },
        )
        check_choice("parameters", self.parameters, GROUPS)

    def resolved(self, pipe) -> dict:
        """Every option with the per-model defaults filled in."""
        kind = getattr(pipe, "kind", None) or ("shapes" if model_info(pipe).world == "shapes" else "text-to-image")
        values = dataclasses.asdict(self)
        for name, default in DEFAULTS[kind].items():
            if values[name] is None:
                values[name] = default
        return values


@dataclass(frozen=True)
class AmnesiaInputs:
    fisher: Path | None = input_field(
        "Fisher cache: a folder (file named by the model's hash) or a .safetensors file; reused when it matches"
    )
    checkpoint: Path | None = input_field("file that Ctrl-C and every --checkpoint-every steps write")
    resume: bool = input_field("continue the run saved in --checkpoint", default=False)
    checkpoint_every: int = input_field("steps between checkpoints", default=100)


# -- what is forgotten, replayed and remapped ----------------------------------------------------------------
def _digit_class(pipe, name: str, what: str) -> int:
    classes = list(pipe.classes)
    if name not in classes:
        raise ValueError(f"{what} {name!r} is not a class of {model_info(pipe).spec}; classes: {', '.join(classes)}")
    return classes.index(name)


def _shapes_replay(concepts: tuple[str, ...], n: int, seed: int) -> list[str]:
    """Captions of ShapesSD's training distribution that do not name a forgotten concept (or its synonyms)."""
    import numpy as np

    from concept_edit.shapes.captions import OBJECT_WORDS, sample_example

    banned = {_norm(c) for c in concepts}
    for c in list(banned):
        banned.update(_norm(w) for w in OBJECT_WORDS.get(c, ()))
    rng = np.random.default_rng([seed, 4004])
    out: list[str] = []
    while len(out) < n:
        example = sample_example(rng)
        scene = example.scene
        fields = {scene.obj, scene.color, scene.style} if scene is not None else set()
        text = f" {_norm(example.caption)} "
        if not (fields & banned) and not any(f" {b} " in text for b in banned):
            out.append(example.caption)
    return out


@dataclass
class _Plan:
    """Conditions and samples: forget rows, replay data, surrogate data (None: fresh uniform per step)."""

    cond: object
    forget_rows: torch.Tensor
    replay: Data
    fisher: Data
    surrogate: Data | None
    replay_texts: list[str]  # what the replay and the Fisher samples were drawn for (prompts or classes)


def _bare(text: str) -> str:
    """A phrase without its leading article: "a cat" and "Cat" name the same concept."""
    words = _norm(text).split()
    return " ".join(words[1:] if len(words) > 1 and words[0] in ("a", "an", "the") else words)


def _plan(pipe, backend_factory, request: EditRequest, values: dict, seed: int, progress: bool):
    surrogate = values["surrogate"]
    if _bare(surrogate) in {_bare(c) for c in request.concepts}:
        raise ValueError(f"the surrogate {surrogate!r} is the concept being forgotten; pick a different surrogate")
    uniform = surrogate.strip().lower() == "uniform"
    kind = getattr(pipe, "kind", None)
    if kind in ("vae", "ddpm"):
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
        if request.preserve:
            prompts = list(request.preserve)
        elif model_info(pipe).world == "shapes":
            prompts = _shapes_replay(request.concepts, 64, seed)
        else:
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
    if kind in ("vae", "ddpm"):
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
    return backend, _Plan(getattr(backend, "cond", None), rows["forget"].to(backend.device), replay, fisher,
                          surrogate_data, replay_texts)  # fmt: skip


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
            return [handle.get_tensor(n) for n in names]
    except (SafetensorError, OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--fisher: cannot read {path}: {err}") from None


def save_fisher(path: Path, names: list[str], fisher: list[torch.Tensor], base_hash: str, settings: dict,
                base_model: str) -> None:  # fmt: skip
    from safetensors.torch import save_file

    meta = {"format": FISHER_FORMAT, "base_hash": base_hash, "settings": settings, "base_model": base_model}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tensors = {n: f.detach().cpu().contiguous() for n, f in zip(names, fisher, strict=True)}
        save_file(tensors, str(tmp), metadata={"amnesia": json.dumps(meta)})


def fisher_of(backend, params, data: Data, values: dict, seed: int, *, checkpoint=None, run_config=None,
              resume=False, progress=True) -> list[torch.Tensor]:  # fmt: skip
    """The diagonal Fisher of the current weights on `data` (one squared per-sample gradient each)."""
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

        steps = n
    else:  # the VAE: one ELBO per sample; per-sample gradients of a batch in one vectorised pass
        batch = 256
        steps = (n + batch - 1) // batch

        def squared(step: int) -> list[torch.Tensor]:
            part = data.take(torch.arange(step * batch, min(n, (step + 1) * batch)))
            noise = torch.randn((len(part), backend.latent_dim), generator=step_generator(seed, step, 41))
            return vae_squared_gradients(backend.vae, params, part.x, part.rows, noise.to(backend.device))

    return estimate_fisher(params, steps=steps, squared_gradients=squared, count=n, checkpoint=checkpoint,
                           run_config=run_config, resume=resume, progress=progress)  # fmt: skip


# -- the method ------------------------------------------------------------------------------------------------
def _check(pipe, request: EditRequest, values: dict) -> None:
    if request.guide is not None or request.guides:
        raise ValueError("Selective Amnesia remaps a concept to its surrogate: give it with --surrogate, not --guide")
    kind = getattr(pipe, "kind", None)
    if kind in ("vae", "ddpm"):
        if values["parameters"] != "all":
            raise ValueError("the digits models have no cross-attention: use --parameters all")
        if pipe.dtype != torch.float32:
            raise ValueError(f"Selective Amnesia trains the digits models in float32, not {pipe.dtype}")
    elif pipe.unet.dtype != torch.float32:
        raise ValueError(
            f"Selective Amnesia fine-tunes float32 master weights, but the model is loaded in {pipe.unet.dtype}; "
            "load it in float32 (--dtype float32)"
        )


@register("amnesia", AmnesiaConfig, modes=("erase",), summary="forget by continual learning (Selective Amnesia)",
          inputs_cls=AmnesiaInputs, class_conditional=True)  # fmt: skip
def fit_amnesia(pipe, request: EditRequest, config: AmnesiaConfig, inputs: AmnesiaInputs, *, seed: int = 0,
                progress: bool = True):  # fmt: skip
    """Train Selective Amnesia on `pipe` to forget `request.concepts` and return the change as an `Edit`."""
    values = config.resolved(pipe)
    _check(pipe, request, values)
    checkpoint = Path(inputs.checkpoint) if inputs.checkpoint is not None else None
    fisher_partial = checkpoint.with_name(checkpoint.stem + ".fisher.safetensors") if checkpoint else None
    if inputs.resume and (checkpoint is None or not (checkpoint.exists() or fisher_partial.exists())):
        raise ValueError(f"--resume: there is no checkpoint at {inputs.checkpoint}")
    started = time.perf_counter()
    # the Fisher depends on every weight (text encoder and frozen UNet parts included), not only the trained ones;
    # hashed only when a cache or a checkpoint must be matched to the model (a billion weights on SD)
    needs_hash = inputs.fisher is not None or checkpoint is not None
    base_hash = combine({k: current_digest(pipe, k, t) for k, t in named_tensors(pipe).items()}) if needs_hash else ""
    if inputs.fisher is not None and Path(inputs.fisher).is_file():
        check_fisher_owner(Path(inputs.fisher), base_hash)
    sampling = {"steps": values["sampling_steps"], "guidance": values["sampling_guidance"]}
    backend, plan = _plan(pipe, lambda cond: backend_for(pipe, cond, **sampling), request, values, seed, progress)
    keys = backend.parameter_names(values["parameters"])
    settings = _fisher_settings(values, plan, seed)
    cache = _fisher_file(inputs.fisher, base_hash, settings)
    run_config = {"config": values, "request": request.to_dict(), "seed": seed, "base_hash": base_hash}
    with trainable(pipe, keys) as tuned:
        params = tuned.parameters
        if cache is not None and cache.exists():
            fisher = [f.to(p.device) for f, p in zip(load_fisher(cache, keys, base_hash, settings), params,
                                                      strict=True)]  # fmt: skip
            log.info("amnesia: Fisher from %s", cache)
        else:
            fisher = fisher_of(backend, params, plan.fisher, values, seed, checkpoint=fisher_partial,
                               run_config={**settings, "base_hash": base_hash}, resume=inputs.resume,
                               progress=progress)  # fmt: skip
            if cache is not None:
                save_fisher(cache, keys, fisher, base_hash, settings, model_info(pipe).spec)
        penalty = EWCPenalty(params, fisher, values["lam"])
        optimizer = torch.optim.Adam(params, lr=values["lr"])
        state = {"losses": [], "start": 0}
        if inputs.resume and checkpoint.exists():
            saved = load_checkpoint(checkpoint, run_config)
            with torch.no_grad():
                for p, v in zip(params, saved["trained"], strict=True):
                    p.copy_(v)
            optimizer.load_state_dict(saved["optimizer"])
            state.update(losses=list(saved["losses"]), start=saved["step"])
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
            losses = backend.loss(rows.x, rows.rows, t, noise)
            reduce = torch.mean if backend.reduction == "mean" else torch.sum
            forget_loss = reduce(losses[:batch])
            loss = forget_loss + values["gamma"] * reduce(losses[batch:]) if values["gamma"] > 0 else forget_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            penalty.add_gradient_()
            optimizer.step()
            state["losses"].append(loss.item())
            return {"loss": state["losses"][-1], "forget": forget_loss.item()}

        def save_fn(step: int) -> None:
            if checkpoint is None:
                return
            save_checkpoint(checkpoint, step, run_config, trained=[p.detach() for p in params],
                            optimizer=optimizer.state_dict(), losses=state["losses"])  # fmt: skip

        run_steps(total=values["steps"], start=state["start"], step_fn=step_fn, save_fn=save_fn,
                  every=inputs.checkpoint_every, desc="amnesia", progress=progress,
                  checkpointing=checkpoint is not None)  # fmt: skip
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
    log.info("amnesia: %d steps in %.1f s", values["steps"], time.perf_counter() - started)
    request_dict = request.to_dict()
    return tuned.edit(method="amnesia", config={**dataclasses.asdict(config), "resolved": values},
                      request=request_dict, seed=seed, stats=stats)  # fmt: skip
