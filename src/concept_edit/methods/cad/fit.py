"""CAD: concept attribution in diffusion models (Nguyen et al., paper 002), CAD-Erase and CAD-Amplify.

Every weight of the chosen modules gets the score w_i dJ/dw_i (eq. 2-3, `concept_edit.methods.cad.attribution`);
the edit sets the most attributed entries to zero (Algorithms 1-2, `concept_edit.methods.cad.ablation`):

* mode `erase`: J is eq. 4 on the model's own samples for the concept, c_base the request's guide (default
  ""); the largest positive scores are zeroed;
* mode `amplify`: J is eq. 5 (minus the training loss) on images of the concept (`images`: a folder, or
  `shapes:OBJECT` renders on ShapesSD); the most negative scores are zeroed.

Defaults follow the official code (feed-forward weights, r = 0.1% per row, 50 DDIM steps and sampling
guidance 3 for SD; on ShapesSD its own 25 steps), except the per-row count, which is at least 1 (see
`cad.ablation`), and the samples: one trajectory per sample with every step kept (`samples` trajectories
per concept) instead of one new trajectory per step.
Attribution is the long part: it shows progress, and with a checkpoint Ctrl-C saves the accumulated
gradients and `resume` continues (the samples are regenerated from the seed, identically).
Across processes (`accelerate launch --num_processes N`): every process draws all the samples alike (from
the seed), takes every N-th backward batch, and the gradient sums are added across processes once, so all
get the one-process scores (up to float32 summation order; `attribute`). Checkpoints are then refused.
`concept-edit attribute` saves the scores; `scores` prunes from such a file without recomputing them.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDIMScheduler

from concept_edit.edit import Edit
from concept_edit.edit.state import combine, current_digest
from concept_edit.io import atomic_path
from concept_edit.methods.cad.ablation import ablation_changes
from concept_edit.methods.cad.attribution import (
    GROUPS,
    Samples,
    add_batch_gradient,
    amplify_samples,
    batch_count,
    chosen_steps,
    erase_samples,
    gradients_for,
    group_weights,
    scores_from,
)
from concept_edit.methods.cad.config import CADConfig, CADInputs  # noqa: F401 - re-exported
from concept_edit.methods.cad.images import resolve_images
from concept_edit.methods.registry import EditRequest, register
from concept_edit.models.conditioning import Conditions, encode_conditions
from concept_edit.models.loading import model_info
from concept_edit.models.prompts import check_request_texts
from concept_edit.processes import Group, check_device, process_group, share, sum_across
from concept_edit.training import Diverged, check_checkpoint, load_checkpoint, run_steps, save_checkpoint
from concept_edit.validation import check_unused
from concept_edit.worlds import world_of

log = logging.getLogger(__name__)

OFFICIAL_STEPS = 50


@dataclass
class Attribution:
    """Scores by weight name, and what they were computed on (for the approximation check)."""

    scores: dict[str, torch.Tensor]
    samples: Samples
    cond: Conditions
    objective: str
    weights: dict[str, torch.nn.Parameter]


def _scheduler(pipe, config: CADConfig):
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(config.steps or world_of(pipe).method_sampling_steps or OFFICIAL_STEPS, device=pipe.device)
    return scheduler


def _check(pipe, request: EditRequest, config: CADConfig, inputs: CADInputs) -> None:
    if request.mode not in ("erase", "amplify"):
        raise ValueError(f"CAD erases or amplifies, not {request.mode}")
    if request.preserve:
        raise ValueError("CAD has no preservation term: the preserve list would be ignored; leave it out")
    check_request_texts(pipe, request)  # `attribute` and `cad-check` come here without the registry's fit
    if request.mode == "amplify":
        if request.guide is not None or request.guides:
            raise ValueError("amplify takes no guide concept (its objective is the training loss on the images)")
        if inputs.images is None and inputs.scores is None:
            raise ValueError("amplify needs images of the concept: --images FOLDER (or shapes:OBJECT on ShapesSD)")
        if len(request.concepts) != 1:
            raise ValueError("amplify takes one concept (the images show it)")
    elif inputs.images is not None:
        raise ValueError("erase uses the model's own samples; --images applies to amplify only")
    if request.mode == "amplify":
        check_unused(config, ["samples", "guidance"], "amplify attributes on the given images and samples nothing")
    steps = len(_scheduler(pipe, config).timesteps)
    if config.timesteps is not None and config.timesteps > steps:
        # refused rather than clamped: the manifest would record timesteps the attribution never used
        raise ValueError(f"timesteps {config.timesteps} is more than the {steps} DDIM steps of a trajectory")
    if inputs.resume and (inputs.checkpoint is None or not Path(inputs.checkpoint).exists()):
        raise ValueError(f"--resume: there is no checkpoint at {inputs.checkpoint}")


def _sample_count(request: EditRequest, config: CADConfig, steps: list[int], images) -> int:
    """How many samples (x_t, t) the attribution averages over, known before any is drawn."""
    if request.mode == "erase":
        return config.samples * len(request.concepts) * len(steps)
    return len(images.pixels) * len(steps)


def attribute(pipe, request: EditRequest, config: CADConfig, inputs: CADInputs, *, seed: int = 0,
              progress: bool = True, group: Group | None = None) -> Attribution:  # fmt: skip
    """The CAD scores of the chosen modules' weights for the request's concept(s) (eq. 3 with eq. 4 or 5).

    The score is w_i dJ/dw_i with J a mean over the samples (eq. 4 or 5), so dJ/dw_i = (1 / M) sum_m dJ_m/dw_i
    is a sum over the M samples, accumulated by backward batch in float32 (`add_batch_gradient`). Under
    `accelerate launch` with several processes (or `group`): every process draws all the samples alike (the
    trajectories' noise and the amplify noise come from per-sample seeded generators), so the union of the
    shares is exactly the one-process set; process r backpropagates the batches r, r + N, ... (the same
    batches as one process, more processes than batches is refused before any sampling), the partial sums
    are added across processes once, at the end (`processes.sum_across`), and every process gets the same
    scores, equal to the one-process ones up to float32 summation order. Only the main process shows
    progress; checkpoints (and --resume) are refused with several processes. With ranks given by hand (an
    unconnected `group`) the scores are this process's share only.
    """
    _check(pipe, request, config, inputs)
    group = process_group() if group is None else group
    if group.count > 1 and (inputs.checkpoint is not None or inputs.resume):
        raise ValueError(
            f"cad: checkpoints (and --resume) work with one process only; with {group.count} processes leave "
            "--checkpoint and --resume out"
        )
    check_device(group, pipe.device)
    progress = progress and group.main
    run_config = {"config": config.attribution_options(), "request": request.to_dict(), "seed": seed,
                  "batch_size": config.batch_size}  # fmt: skip
    if inputs.resume:  # before any sampling: the file is a CAD checkpoint of this attribution
        check_checkpoint(inputs.checkpoint, "cad", run_config)
    weights = group_weights(pipe, config.modules)
    scheduler = _scheduler(pipe, config)
    steps = chosen_steps(len(scheduler.timesteps), config.timesteps)
    objective = request.mode
    images = resolve_images(inputs.images, model_info(pipe).resolution) if objective == "amplify" else None
    batches = -(-_sample_count(request, config, steps, images) // config.batch_size)
    mine = share(batches, group, f"backward batches of {config.batch_size} samples")  # before any sampling
    if objective == "erase":
        concepts, bases = list(request.concepts), list(request.concept_guides)
        cond = encode_conditions(pipe, [*concepts, "", *bases])
        n = len(concepts)
        base_rows = [n if b == "" else n + 1 + k for k, b in enumerate(bases)]
        samples = erase_samples(pipe, cond, list(range(n)), base_rows, n, trajectories=config.samples,
                                scheduler=scheduler, steps=steps, guidance=config.guidance, seed=seed,
                                progress=progress)  # fmt: skip
    else:
        cond = encode_conditions(pipe, [request.concepts[0]])
        samples = amplify_samples(pipe, images.pixels, 0, scheduler=scheduler, steps=steps, seed=seed)
    if batch_count(samples, config.batch_size) != batches:  # the count the shares were dealt from
        raise RuntimeError(f"cad: {len(samples)} samples make {batch_count(samples, config.batch_size)} batches, "
                           f"not the {batches} expected")  # fmt: skip
    grads = {name: torch.zeros(w.shape, dtype=torch.float32, device=w.device) for name, w in weights.items()}
    start = 0
    if inputs.resume:
        saved = load_checkpoint(inputs.checkpoint, run_config, "cad")
        for name, value in saved["grads"].items():
            grads[name].copy_(value)
        start = saved["step"]
        log.info("resumed CAD attribution from %s at batch %d", inputs.checkpoint, start)

    def step_fn(index: int) -> dict[str, float]:
        batch = mine[index]  # with one process, index == batch: checkpoints count batches as before
        add_batch_gradient(pipe, samples, cond, weights, objective, grads, batch=batch, batch_size=config.batch_size)
        if not all(bool(torch.isfinite(g).all()) for g in grads.values()):
            raise Diverged(f"cad: the attribution gradient is not finite after batch {batch + 1}")
        return {}

    def save_fn(batch: int) -> None:
        if inputs.checkpoint is not None:
            save_checkpoint(inputs.checkpoint, batch, run_config, kind="cad", grads=grads)

    with gradients_for(pipe, weights):
        run_steps(total=len(mine), start=start, step_fn=step_fn, save_fn=save_fn,
                  every=inputs.checkpoint_every, desc=f"cad: attribution ({objective})", progress=progress,
                  checkpointing=inputs.checkpoint is not None, checkpoint_file=inputs.checkpoint,
                  diverged_hint="; lower --guidance (the samples or the objective overflow)")  # fmt: skip
    sum_across(list(grads.values()), group)  # the one sum across processes (nothing with one process)
    return Attribution(scores_from(weights, grads), samples, cond, objective, weights)


# -- scores files -------------------------------------------------------------------------------------------------
def _weights_digest(pipe, weights: dict[str, torch.nn.Parameter]) -> str:
    return combine({name: current_digest(pipe, name, w) for name, w in weights.items()})


def save_scores(path: str | Path, attribution: Attribution, request: EditRequest, config: CADConfig, seed: int,
                pipe) -> Path:  # fmt: skip
    """Write the scores (float32, by weight name) with what they are the scores of, atomically."""
    import json

    from safetensors.torch import save_file

    meta = {
        "format": "concept-edit-cad-scores/1",
        "base_model": model_info(pipe).spec,
        "weights_hash": _weights_digest(pipe, attribution.weights),
        "request": request.to_dict(),
        "config": config.attribution_options(),
        "seed": seed,
        "samples": len(attribution.samples),
    }
    path = Path(path)
    tensors = {name: s.detach().cpu().contiguous() for name, s in attribution.scores.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"cad": json.dumps(meta)})
    return path


def load_scores(path: str | Path, pipe, request: EditRequest, modules: tuple[str, ...]):
    """Scores from a file made for this model's current weights and this request; (scores, weights, meta)."""
    import json

    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--scores: no such file: {path}")
    try:
        with safe_open(str(path), "pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("cad", "null"))
            if not isinstance(meta, dict) or meta.get("format") != "concept-edit-cad-scores/1":
                raise ValueError(f"--scores: {path} is not a CAD scores file (write one with `concept-edit attribute`)")
            scores = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - safe_open API
    except (SafetensorError, OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--scores: cannot read {path}: {err}") from None
    saved = meta["request"]
    if saved.get("mode") != request.mode or list(saved.get("concepts", [])) != list(request.concepts):
        raise ValueError(
            f"--scores: {path} holds {saved.get('mode')} scores for {saved.get('concepts')}, "
            f"not {request.mode} scores for {list(request.concepts)}"
        )
    if saved.get("guide") != request.guide or list(saved.get("guides", [])) != list(request.guides):
        raise ValueError(f"--scores: {path} was computed with another base prompt (guide {saved.get('guide')!r})")
    weights = group_weights(pipe, modules)
    missing = sorted(set(weights) - set(scores))
    if missing:
        raise ValueError(f"--scores: {path} has no scores for {len(missing)} chosen weight(s), e.g. {missing[0]}")
    for name, w in weights.items():
        if tuple(scores[name].shape) != tuple(w.shape):
            raise ValueError(f"--scores: {name} has shape {tuple(scores[name].shape)} in {path}, {tuple(w.shape)} here")
        if not bool(torch.isfinite(scores[name]).all()):
            raise ValueError(f"--scores: {path} holds NaN or infinite scores (at {name}); recompute it")
    scored = {name: w for name, w in group_weights(pipe, GROUPS).items() if name in scores}
    if _weights_digest(pipe, scored) != meta["weights_hash"]:
        raise ValueError(f"--scores: {path} was computed on other weights than this model's (or with other edits)")
    return {name: scores[name] for name in weights}, weights, meta


def _check_scores_options(config: CADConfig, saved: dict, path) -> None:
    """Refuse an attribution option given with --scores that the file's scores were not computed with.

    Pruning from a scores file runs no attribution: its options come from the file (and are recorded so), so
    a different value given here would do nothing. (batch_size passes: it changes only how fast scores come.)
    """
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    for name in ("samples", "steps", "timesteps", "guidance"):
        value = getattr(config, name)
        if value != defaults[name] and saved.get(name, defaults[name]) != value:
            raise ValueError(
                f"--scores: {path} was computed with {name} {saved.get(name, defaults[name])}; {name} {value} does "
                "nothing when pruning from a scores file: leave it out"
            )


# -- the method ---------------------------------------------------------------------------------------------------
@register("cad")
def fit_cad(pipe, request: EditRequest, config: CADConfig, inputs: CADInputs, *, seed: int = 0, progress: bool = True):
    """CAD-Erase / CAD-Amplify: attribute (or read the scores), then zero the top entries as a sparse edit."""
    _check(pipe, request, config, inputs)
    if inputs.scores is not None:
        if inputs.images is not None or inputs.resume:
            raise ValueError("--scores replaces attribution: --images and --resume do not apply")
        scores, weights, meta = load_scores(inputs.scores, pipe, request, config.modules)
        attribution_config, samples = meta["config"], meta["samples"]
        _check_scores_options(config, attribution_config, inputs.scores)
    else:
        result = attribute(pipe, request, config, inputs, seed=seed, progress=progress)
        scores, weights = result.scores, result.weights
        attribution_config, samples = config.attribution_options(), len(result.samples)
        bad = next((name for name, score in scores.items() if not bool(torch.isfinite(score).all())), None)
        if bad is not None:
            raise ValueError(
                f"the attribution diverged: the scores of {bad} are NaN or infinite (sampling guidance "
                f"{config.guidance}, steps {config.steps or len(_scheduler(pipe, config).timesteps)}); lower --guidance"
            )
    changes, counts = ablation_changes(weights, scores, config.ablate_ratio, request.mode, config.scope,
                                       config.row_minimum)  # fmt: skip
    if not changes:
        sign = "positive" if request.mode == "erase" else "negative"
        given = f"ablate_ratio {config.ablate_ratio}, scope {config.scope}, row_minimum {config.row_minimum}"
        hint = "; with row_minimum 0 a ratio below 1 / row length selects no entry" if config.row_minimum == 0 else ""
        raise ValueError(f"nothing to ablate: no weight has a {sign} score among the top entries ({given}){hint}")
    total = sum(w.numel() for w in weights.values())
    stats = {
        "zeroed": sum(counts.values()),
        "zeroed_share": round(sum(counts.values()) / total, 6),
        "weights_attributed": total,
        "samples": samples,
        "attribution": attribution_config,
    }
    config_out = dataclasses.asdict(config)
    if inputs.scores is not None:
        config_out.update({k: v for k, v in attribution_config.items() if k in config_out})
        config_out["modules"] = list(config.modules)
    return Edit.create(pipe, changes, method="cad", config=config_out, request=request.to_dict(), seed=seed,
                       stats=stats)  # fmt: skip
