"""Eigen-direction erasure in a diffusion model's cross-attention (paper 000, section 2.3 and eq. 4-6).

The model generates `samples` images for each concept; on the way, the conditional branch's output of each
chosen cross-attention layer is recorded (every image token at every denoising step is one feature vector,
eq. 4's eta^j) into a running Gram matrix. The concept's top-k left singular directions (eq. 5) are then
removed from that layer's output for every prompt (eq. 6), as an activation edit. Several concepts: the
span of all their directions is removed (one projection per layer).

The hook sits on the output projection `attn2.to_out.0` (a linear layer whose output is the attention
module's output in SD's UNets), so that `fold=True` can turn the projection into exact weight deltas
(W' = (I - U U^T) W, b' likewise) that export into a plain diffusers folder.

`eraser="leace"` replaces eq. 4-6 with LEACE (Belrose et al. 2023): the affine map after which no linear
probe tells the concept's features from the others'; "the others" are the `preserve` prompts, or the empty
prompt when none is given. Not in the paper; offered for comparison (`benchmarks/eigen_experiments.py`).
The paper does not centre the activations; `centre=True` is offered and says so in the manifest.

Defaults (every cross-attention layer, k = 3) were chosen on ShapesSD with evaluation seeds 5000+, which the
reported figures never use: there, top-1 directions at any layer set, and top-3 at the layers whose attention
maps outline the object, left "circle" fully drawn; top-3 at every layer removed most of it
(`benchmarks/eigen_experiments.py`). The paper's main figures use k = 1.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import torch
from tqdm.auto import tqdm

from concept_edit.edit import Edit
from concept_edit.edit.file import get_module
from concept_edit.eigen.erasers import fold as fold_projection
from concept_edit.eigen.erasers import leace_eraser, svd_eraser
from concept_edit.eigen.statistics import ActivationStatistics, NonFiniteActivations, recording
from concept_edit.methods.eigen.config import ERASERS, EigenConfig  # noqa: F401 - re-exported
from concept_edit.methods.registry import EditRequest, register
from concept_edit.models.conditioning import encode_conditions, predict_noise
from concept_edit.models.loading import model_info
from concept_edit.models.prompts import concept_ids
from concept_edit.models.targets import cross_attention_layers
from concept_edit.training import step_generator


def chosen_layers(pipe, layers: tuple[str, ...]) -> list[str]:
    """Module paths of the hooked linear layers (`...attn2.to_out.0`) for indices or paths; all by default."""
    paths = [layer.path for layer in cross_attention_layers(pipe)]
    last = len(paths) - 1
    if not layers:
        chosen = paths
    else:
        chosen = []
        for layer in layers:
            if layer.isdigit():
                if int(layer) >= len(paths):
                    raise ValueError(f"layer {layer}: the model has {len(paths)} cross-attention layers (0-{last})")
                chosen.append(paths[int(layer)])
            elif layer.removesuffix(".to_out.0") in paths:
                chosen.append(layer.removesuffix(".to_out.0"))
            else:
                raise ValueError(
                    f"no cross-attention layer {layer!r}; give an index 0-{last} or one of: {', '.join(paths)}"
                )
    return [f"{path}.to_out.0" for path in chosen]


@torch.no_grad()
def record_prompts(pipe, stats: ActivationStatistics, prompts, config: EigenConfig, seed: int, progress: bool):
    """Generate `samples` images per prompt (guided DDIM, deterministic given the seed) and record each class.

    Only the conditional branch is recorded: the unconditional call of each guided step runs with the hooks off.
    """
    from diffusers import DDIMScheduler

    info = model_info(pipe)
    steps = config.steps or info.default_steps
    guidance = info.default_guidance if config.guidance is None else config.guidance
    unet = pipe.unet
    cond = encode_conditions(pipe, [*prompts, ""])
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    size = info.resolution // getattr(pipe, "vae_scale_factor", 8)
    n = config.samples
    with recording(stats, lambda path: get_module(pipe, path)) as rec:
        for label, prompt in enumerate(tqdm(prompts, desc="eigen: statistics", disable=not progress, leave=False)):
            scheduler.set_timesteps(steps, device=pipe.device)
            noise = torch.randn((n, unet.config.in_channels, size, size), generator=step_generator(seed, label, 7))
            x = (noise * scheduler.init_noise_sigma).to(pipe.device, unet.dtype)
            rows, empty = cond.take([label] * n), cond.take([len(prompts)] * n)
            for t in scheduler.timesteps:
                model_in = scheduler.scale_model_input(x, t)
                rec.enabled = False
                eps_u = predict_noise(unet, model_in, t, empty)
                rec.enabled, rec.labels = True, label
                try:
                    eps_c = predict_noise(unet, model_in, t, rows)
                except NonFiniteActivations as err:
                    raise ValueError(
                        f"sampling {prompt!r} at guidance {guidance} diverged ({err}); lower --guidance"
                    ) from None
                x = scheduler.step(eps_u + guidance * (eps_c - eps_u), t, x).prev_sample


def _check(pipe, request: EditRequest, config: EigenConfig) -> None:
    for concept in request.concepts:
        if not concept_ids(pipe, concept):
            raise ValueError(f"concept {concept!r} has no tokens for this model's tokenizer")
    if request.guide is not None or request.guides:
        raise ValueError("eigen removes directions; it takes no guide concept")
    if config.eraser == "leace" and importlib.util.find_spec("concept_erasure") is None:
        raise ValueError("the leace eraser needs the concept-erasure package: pip install 'concept-edit[eigen]'")
    if config.eraser == "svd" and request.preserve:
        raise ValueError("the svd eraser takes no preserved concepts (eq. 6 projects every prompt alike); use leace")


@register("eigen")
def fit_eigen(pipe, request: EditRequest, config: EigenConfig, inputs=None, *, seed: int = 0, progress: bool = True):
    _check(pipe, request, config)
    layers = chosen_layers(pipe, config.layers)
    for layer in layers:  # before any image is generated
        dim = get_module(pipe, layer).out_features
        if config.eraser == "svd" and config.k * len(request.concepts) > dim:
            raise ValueError(f"k = {config.k} per concept is more than the {dim} features at {layer} can hold")
    concepts = list(request.concepts)
    others = list(request.preserve) or [""]
    prompts = concepts + (others if config.eraser == "leace" else [])
    stats = ActivationStatistics(layers, list(range(len(prompts))))
    record_prompts(pipe, stats, prompts, config, seed, progress)
    changes, explained, ranks = [], {}, {}
    for layer in layers:
        if config.eraser == "svd":
            change = svd_eraser(stats, layer, list(range(len(concepts))), config.k, centre=config.centre)
            explained[layer] = _explained(stats, layer, change, len(concepts))
        else:
            change = leace_eraser(stats, layer, list(range(len(concepts))))
            ranks[layer] = change.rank
        changes.extend(fold_projection(change, get_module(pipe, layer)) if config.fold else [change])
    stats_out = {"layers": layers, "feature_vectors_per_concept": stats.samples(layers[0], 0)}
    stats_out.update({"explained_share": explained} if explained else {"leace_rank": ranks})
    return Edit.create(
        pipe,
        changes,
        method="eigen",
        config=dataclasses.asdict(config),
        request=request.to_dict(),
        seed=seed,
        stats=stats_out,
    )


def _explained(stats: ActivationStatistics, layer: str, change, concepts: int) -> float:
    """Share of the concepts' activation energy (sum of squares, around `bias` when centred) in the removed span."""
    layer_stats = stats.layer(layer)
    gram = layer_stats.gram[:concepts].sum(0)
    if change.bias is not None:
        mean = change.bias.double()
        gram = (
            gram
            - 2 * torch.outer(layer_stats.total[:concepts].sum(0), mean)
            + layer_stats.count[:concepts].sum() * torch.outer(mean, mean)
        )
    v = change.directions.double()
    return round(float(torch.trace(v @ gram @ v.T) / torch.trace(gram)), 4)
