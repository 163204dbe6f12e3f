"""RECE: Reliable and Efficient Concept Erasure (Gong et al., ECCV 2024), on UCE's closed form.

UCE maps the concept's rows c to the guide's (W_new c = W_old g, eq. 7 of UCE, with the preserved rows kept).
That erases the word, not the concept: another text embedding e can still make the edited projections say what
the concept said, and a soft-prompt attack finds one. RECE derives that embedding in closed form and erases it
too, round after round. With the current edit written W_new = W_old M (M = I + U V, UCE's shared operator), the
embedding that regenerates c is

    e* = argmin_e  sum_l || W_l M e - W_l c ||^2 + lambda ||e||^2  =  (M^T G M + lambda I)^{-1} M^T G c,
    G = sum_l W_l^T W_l

over the edited projections l (keys and values, as UCE edits them). Each round appends e* to the erased rows,
mapped to the concept's guide, and re-solves UCE's closed form from the original weights with the preserved
rows: the preserved concepts are held by UCE's own preservation term, which is how the closed form keeps them.

Our reading of the paper, where it leaves a choice: the derivation runs over the keys and values UCE edits (the
paper's derivation is on the cross-attention projections; the official code was not available to us);
lambda is relative to G's mean eigenvalue (`derive_lam`), so it means the same on every model; every derived
embedding is kept (the set grows by one row per concept row per round) and the edit is always re-solved from the
original weights, never stacked. The round count is an option (`rounds`); each round's regeneration residual
(how far the derived e* falls short of the concept's original keys and values under the current edit, 1 = it
regenerates nothing, 0 = everything) is in the edit's stats, so the stop can be read from the run.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from concept_edit.edit import Edit
from concept_edit.methods.rece.config import RECEConfig
from concept_edit.methods.registry import EditRequest, NoInputs, register
from concept_edit.methods.uce.closed_form import (
    aligned,
    encode,
    layer_deltas,
    rows_of,
    solve,
    stack_rows,
    target_weights,
)

log = logging.getLogger(__name__)


def gram(weights: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """G = sum_l W_l^T W_l over the edited projections (d x d, d the text embedding's width)."""
    mats = [w.detach().to("cpu", dtype) for w in weights.values()]
    return sum(w.T @ w for w in mats)


def regenerating_embeddings(g: torch.Tensor, operator: torch.Tensor, concept: torch.Tensor, lam: float) -> torch.Tensor:
    """e* for each concept row (rows of `concept`, (m, d)): the embedding whose projections under the edited
    weights W M (M = I + operator) come closest to the concept's under the original W (module docstring)."""
    d = g.shape[0]
    m = torch.eye(d, dtype=g.dtype) + operator
    a = m.T @ g @ m + lam * torch.eye(d, dtype=g.dtype)
    return torch.linalg.solve(a, m.T @ g @ concept.T).T


def residual(g: torch.Tensor, operator: torch.Tensor, embeds: torch.Tensor, concept: torch.Tensor) -> float:
    """Mean over rows of ||W M e - W c||_G / ||W c||_G with ||x||_G^2 = x^T G x: how much of the concept's keys and
    values the embeddings fail to regenerate under the edit (0: all of it regenerated)."""
    m = torch.eye(g.shape[0], dtype=g.dtype) + operator
    gap = embeds @ m.T - concept
    num = ((gap @ g) * gap).sum(1).sqrt()
    den = ((concept @ g) * concept).sum(1).sqrt()
    return float((num / den).mean())


@register("rece")
def fit_rece(pipe, request: EditRequest, config: RECEConfig, inputs: NoInputs, *, seed: int = 0, progress: bool = True):
    """UCE's erase, then `config.rounds` rounds of erasing the embedding that regenerates each concept."""
    weights = target_weights(pipe, config.edit_keys)
    guides = list(request.concept_guides)
    unique = list(dict.fromkeys(guides))
    prompts = [*request.concepts, *unique, *request.preserve]
    embeds, spans = encode(pipe, prompts, config.tokens)
    n, k = len(request.concepts), len(unique)
    at = {guide: n + i for i, guide in enumerate(unique)}
    pairs = [aligned(embeds[i], spans[i], embeds[at[guides[i]]], spans[at[guides[i]]][1], config.tokens)
             for i in range(n)]  # fmt: skip
    concept_rows = torch.cat([c for c, _ in pairs]).to(config.dtype)
    guide_rows = torch.cat([t for _, t in pairs]).to(config.dtype)
    preserve = stack_rows([rows_of(embeds[j], spans[j], config.tokens) for j in range(n + k, len(prompts))],
                          concept_rows.shape[1]).to(config.dtype)  # fmt: skip
    g = gram(weights, config.dtype)
    lam = config.derive_lam * float(torch.trace(g)) / g.shape[0]
    edit, targets = concept_rows, guide_rows
    u, v = solve(config, edit, targets, preserve)
    history = []
    for _ in range(config.rounds):
        operator = u @ v
        derived = regenerating_embeddings(g, operator, concept_rows, lam)
        history.append({"residual_before": residual(g, operator, derived, concept_rows)})
        edit, targets = torch.cat([edit, derived]), torch.cat([targets, guide_rows])
        u, v = solve(config, edit, targets, preserve)
        history[-1]["residual_after"] = residual(g, u @ v, derived, concept_rows)
    operator = u @ v
    final = regenerating_embeddings(g, operator, concept_rows, lam)
    stats = {
        "edited_tokens": len(edit),
        "preserved_tokens": len(preserve),
        "rounds": history,
        "residual_of_the_next_derived": residual(g, operator, final, concept_rows),
        "derive_lambda": lam,
    }
    log.info("RECE: %d rounds, residuals %s", config.rounds, [round(h["residual_before"], 3) for h in history])
    deltas = layer_deltas(weights, u, v, config.dtype)
    return Edit.create(
        pipe, deltas, method="rece", config=dataclasses.asdict(config), request=request.to_dict(), seed=seed,
        stats=stats,
    )
