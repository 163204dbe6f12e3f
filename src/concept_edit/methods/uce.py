"""Unified Concept Editing (UCE; Gandikota et al., WACV 2024, paper 001): closed-form edits of the
cross-attention key and value projections.

For every cross-attention projection W (to_k and to_v of every layer), eq. 6 asks for

    min_W  s_e * sum_{c_i in E} ||W c_i - v_i*||^2 + s_p * sum_{c_j in P} ||W c_j - W_old c_j||^2
           + lam * ||W - W_old||_F^2

whose minimiser (eq. 7; the lam term is TIME's identity regulariser, eq. 5 / appendix B) is

    W = (s_e sum v_i* c_i^T + s_p sum W_old c_j c_j^T + lam W_old) (s_e sum c_i c_i^T + s_p sum c_j c_j^T + lam I)^-1.

Every UCE target is the old projection of some embedding, v_i* = W_old t_i (erase eq. 8: t_i = c_guide;
moderate eq. 10: t_i = c_"" ; debias eq. 9: t_i = c_i + sum_k alpha_k a_k), so eq. 7 rearranges into the
MEMIT-style update of appendix C:

    W = W_old (I + P),   P = s_e (T - C_E)^T C_E M^-1,   M = lam I + s_e C_E^T C_E + s_p C_P^T C_P

(rows of C_E, T, C_P are the embeddings). P is the same d x d matrix for every layer, so the whole edit is
one symmetric solve of size d (768 for SD 1.x, 2048 for SDXL) however many layers and concepts there are,
and rank(P) <= number of edited tokens, which is how the delta is stored. The solve uses
`torch.linalg.solve` (no explicit inverse) in float64 by default.

Choices that follow the official code (rohitgandikota/unified-concept-editing, trainscripts/uce_sd_*.py):
  * token alignment (`tokens`): "last" (default, trainscripts/uce_sd_erase.py) edits the embedding of the
    concept's last token (`attention_mask.sum() - 2`; for "" that is the start token) toward the guide's
    last-token embedding; "trailing" (the earlier train-scripts/train_erase.py, technique "replace") edits the
    last token and every token after it (end of text, padding), aligned position by position with the
    guide's last token and the ones after it, which also reaches the concept's traces in the tokens a causal
    text encoder writes after it; "all" edits every token of the concept toward the guide's last token;
  * defaults erase_scale=1, preserve_scale=1, lam=0.5, guide "" (the official script uses "art" for styles);
  * debias (eq. 9, Algorithm 1): in `uce_debias.py`, which names the official scripts' loops as options
    (`debias_variant`) and adds a controller on alpha (`debias_controller`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence

import torch

from concept_edit.edit import DenseDelta, Edit, LowRankDelta
from concept_edit.methods.options.uce import TOKEN_MODES, UCEConfig, UCEInputs  # noqa: F401 - re-exported
from concept_edit.methods.registry import EditRequest, register
from concept_edit.methods.uce_debias import debias
from concept_edit.models.prompts import (
    concept_ids,
    concept_token_positions,
    encode_prompt_tokens,
    encode_prompts,
    forces_zero_unconditional,
    last_token_index,
    prompt_lengths_ok,
    unconditional_embedding,
)
from concept_edit.models.targets import cross_attention_layers, get_parameter
from concept_edit.validation import check_unused

log = logging.getLogger(__name__)

CONDITION_LIMIT = {torch.float64: 1e10, torch.float32: 1e5}


# -- the closed form -----------------------------------------------------------------------------------------
def uce_operator(
    edit_rows: torch.Tensor,
    target_rows: torch.Tensor,
    preserve_rows: torch.Tensor,
    *,
    erase_scale: float,
    preserve_scale: float,
    lam: float,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors (U, V) of the shared update P = U @ V with W_new = W_old (I + P) (eq. 7, appendix C form).

    edit_rows C_E (m, d), target_rows T (m, d) with v_i* = W_old t_i, preserve_rows C_P (n, d).
    Returns U = (T - C_E)^T of shape (d, m) and V = s_e C_E M^-1 of shape (m, d).
    """
    c_e, t, c_p = (x.to(dtype) for x in (edit_rows, target_rows, preserve_rows))
    d = c_e.shape[1]
    m = lam * torch.eye(d, dtype=dtype) + erase_scale * (c_e.T @ c_e)
    if len(c_p):
        m = m + preserve_scale * (c_p.T @ c_p)
    _check_conditioning(m, lam, dtype)
    x = torch.linalg.solve(m, c_e.T)  # M^-1 C_E^T; M is symmetric and, checked above, well-conditioned
    return (t - c_e).T, erase_scale * x.T


def _check_conditioning(m: torch.Tensor, lam: float, dtype: torch.dtype) -> None:
    """Refuse a system whose solution would be noise (e.g. MEMIT's lam = 0 with too few preserved concepts)."""
    limit = CONDITION_LIMIT[dtype]
    if lam > 0 and (lam + torch.trace(m).item()) / lam < limit:
        return  # lam I bounds the smallest eigenvalue: no eigendecomposition needed
    eig = torch.linalg.eigvalsh(m)
    cond = (eig[-1] / eig[0].clamp(min=torch.finfo(dtype).tiny)).item()
    if cond > limit or eig[0] <= 0:
        raise ValueError(
            f"the UCE system is ill-conditioned (condition number {cond:.1e} > {limit:.0e}): the edited and "
            f"preserved concepts do not span the {m.shape[0]}-d text embedding, so the edit would be noise. "
            "Raise --lam (UCE's default is 0.5) or preserve more concepts"
        )


def target_weights(pipe, edit_keys: bool) -> dict[str, torch.nn.Parameter]:
    """Parameter path -> weight of every cross-attention to_v (and to_k) projection."""
    out = {}
    for layer in cross_attention_layers(pipe):
        for proj in (layer.to_k, layer.to_v) if edit_keys else (layer.to_v,):
            out[f"{proj}.weight"] = get_parameter(pipe, f"{proj}.weight")
    return out


def layer_deltas(
    weights: dict[str, torch.Tensor], u: torch.Tensor, v: torch.Tensor, dtype: torch.dtype
) -> list[DenseDelta | LowRankDelta]:
    """Delta W_l = W_l U V for every layer, kept as factors (W_l U, V) when that is smaller."""
    deltas, shared = [], None
    rank, d = v.shape
    for key, w in weights.items():
        w = w.detach().to("cpu", dtype)
        if w.shape[1] != d:
            raise ValueError(f"{key} reads {w.shape[1]}-d inputs but the text embeddings are {d}-d")
        if rank * (w.shape[0] + d) < w.shape[0] * d:
            deltas.append(LowRankDelta(key, (w @ u).float(), v.float(), tuple(w.shape)))
        else:
            shared = (u @ v) if shared is None else shared
            deltas.append(DenseDelta(key, (w @ shared).float()))
    return deltas


# -- embeddings -------------------------------------------------------------------------------------------
def _encode(
    pipe, prompts: Sequence[str], tokens: str | None = None, *, padded: bool = False
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Token embeddings of every prompt and the (first, last) positions of its concept (`concept_span`).

    `tokens` "last" and "all" read only positions up to the concept's last token, before end-of-text: prompts
    are then encoded padded to their batch's longest prompt (`encode_prompt_tokens`, the same rows), and the
    positions after a prompt's end-of-text are not computed: they are NaN, so that reading one cannot pass
    unnoticed. "trailing" (and None: any position) reads the padding up to the maximum length, which only
    max-length padding computes; `padded=True` asks for it too (the benchmark's reference).
    """
    prompt_lengths_ok(pipe, prompts)
    for p in prompts:
        if p:
            concept_ids(pipe, p)
    spans = [concept_span(pipe, p) for p in prompts]
    if padded or tokens not in ("last", "all"):
        return encode_prompts(pipe, prompts), spans
    return _nan_padded(encode_prompt_tokens(pipe, prompts)), spans


def _nan_padded(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """(N, longest, dim) from per-prompt rows of different lengths, NaN where a prompt has no row."""
    out = torch.full((len(rows), max(len(r) for r in rows), rows[0].shape[-1]), float("nan"))
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


ARTICLES = ("a", "an", "the")


def concept_span(pipe, prompt: str) -> tuple[int, int]:
    """(first, last) token positions of the concept's own words in its prompt: a leading article is left out.

    Under a causal text encoder the rows of "a" or "the" are the same in every prompt that starts with them,
    so `tokens="all"` must not edit them (it would edit "the circle" along with "the acme logo").
    """
    last = int(last_token_index(pipe, [prompt])[0])
    if last == 0:  # the empty prompt: its start token
        return 0, 0
    article, _, rest = prompt.strip().partition(" ")
    core = rest if article.lower() in ARTICLES and rest.strip() else prompt
    return concept_token_positions(pipe, prompt, core)[0], last


def _rows(embeds: torch.Tensor, span: tuple[int, int], tokens: str) -> torch.Tensor:
    """The rows of one prompt that UCE edits or preserves."""
    first, last = span
    if tokens == "trailing":
        return embeds[last:]
    if tokens == "last":
        return embeds[last : last + 1]
    return embeds[first : last + 1]


def _aligned(concept: torch.Tensor, span: tuple[int, int], guide: torch.Tensor, guide_last: int, tokens: str):
    """Edit rows of a concept and the guide rows they map to (eq. 8: v* = W_old c_guide)."""
    if tokens == "trailing":
        last = span[1]
        width = len(concept) - max(last, guide_last)
        return concept[last : last + width], guide[guide_last : guide_last + width]
    rows = _rows(concept, span, tokens)
    return rows, guide[guide_last].expand_as(rows)


def _stack(rows: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
    return torch.cat(list(rows)) if rows else torch.zeros(0, dim)


# -- the method ---------------------------------------------------------------------------------------------
@register("uce")
def fit_uce(pipe, request: EditRequest, config: UCEConfig, inputs: UCEInputs, *, seed: int = 0, progress: bool = True):
    """Compute a UCE edit for `request` on `pipe`; the pipeline is left unchanged."""
    weights = target_weights(pipe, config.edit_keys)
    if request.mode == "debias":
        if inputs.classifier is None:
            raise ValueError("UCE debias needs a classifier of generated images (--classifier oracle | clip:<id>)")
        deltas, stats = debias(pipe, request, config, weights, inputs.classifier, seed, progress)
    else:
        debias_options = [f.name for f in dataclasses.fields(config) if f.name.startswith("debias_")]
        check_unused(config, debias_options, f"the debias_ options tune debias, and the mode is {request.mode}")
        if not request.preserve:
            check_unused(config, ["preserve_scale"], "it weighs the preserved concepts, and none is given")
        deltas, stats = _erase(pipe, request, config, weights)
    return Edit.create(
        pipe, deltas, method="uce", config=dataclasses.asdict(config), request=request.to_dict(), seed=seed, stats=stats
    )


def _erase(pipe, request: EditRequest, config: UCEConfig, weights, *, padded: bool = False) -> tuple[dict, dict]:
    """Erase (eq. 8: each concept toward its guide) or moderate (eq. 10: toward the unconditional input).

    `padded=True` encodes every prompt padded to the maximum length (see `_encode`; the same edit, slower).
    """
    moderate = request.mode == "moderate"
    guides = [""] * len(request.concepts) if moderate else list(request.concept_guides)
    unique = list(dict.fromkeys(guides))
    started = time.perf_counter()
    prompts = [*request.concepts, *unique, *request.preserve]
    embeds, spans = _encode(pipe, prompts, config.tokens, padded=padded)
    encode_s = time.perf_counter() - started
    n, g = len(request.concepts), len(unique)
    if moderate:  # what the pipeline really feeds as unconditional: SDXL's is zeros, not the encoded ""
        embeds[n] = unconditional_embedding(pipe, embeds[n])
    at = {guide: n + k for k, guide in enumerate(unique)}
    pairs = [
        _aligned(embeds[i], spans[i], embeds[at[guides[i]]], spans[at[guides[i]]][1], config.tokens) for i in range(n)
    ]
    edit = torch.cat([c for c, _ in pairs])
    targets = torch.cat([t for _, t in pairs])
    preserve_rows = [_rows(embeds[j], spans[j], config.tokens) for j in range(n + g, len(prompts))]
    preserve = _stack(preserve_rows, edit.shape[1])
    started = time.perf_counter()
    u, v = _solve(config, edit, targets, preserve)
    deltas = layer_deltas(weights, u, v, config.dtype)
    log.info(
        "UCE: %d edited and %d preserved tokens; encoding %.3fs, solve %.3fs",
        len(edit),
        len(preserve),
        encode_s,
        time.perf_counter() - started,
    )
    stats = {"edited_tokens": len(edit), "preserved_tokens": len(preserve), "guide": guides[0] if g == 1 else guides}
    if moderate:
        stats["unconditional"] = "zeros" if forces_zero_unconditional(pipe) else "encoded empty prompt"
    return deltas, stats


def _solve(config: UCEConfig, edit, targets, preserve) -> tuple[torch.Tensor, torch.Tensor]:
    """eq. 7 with the config's scales: the factors (U, V) of W_new = W (I + U V)."""
    return uce_operator(
        edit,
        targets,
        preserve,
        erase_scale=config.erase_scale,
        preserve_scale=config.preserve_scale,
        lam=config.lam,
        dtype=config.dtype,
    )


def _deltas_from_operator(weights, operator: torch.Tensor, dtype: torch.dtype) -> list[DenseDelta | LowRankDelta]:
    """Factor a d x d update (W_new = W_old (I + operator)) at its numerical rank and expand per layer."""
    u, s, vh = torch.linalg.svd(operator)
    keep = s > s[0] * (1e-12 if dtype == torch.float64 else 1e-6) if s[0] > 0 else s > 0
    rank = max(int(keep.sum()), 1)
    return layer_deltas(weights, u[:, :rank] * s[:rank], vh[:rank], dtype)
