"""UCE's closed form and what it reads: the least-squares solve of eq. 7, its per-layer deltas, and the token
rows of the edited, guide and preserved prompts. Shared by erase/moderate (`fit.py`) and debias (`debias.py`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from concept_edit.edit import DenseDelta, LowRankDelta
from concept_edit.models.prompts import (
    concept_ids,
    concept_token_positions,
    encode_prompt_tokens,
    encode_prompts,
    last_token_index,
    prompt_lengths_ok,
)
from concept_edit.models.targets import cross_attention_layers, get_parameter

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
def encode(
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


def rows_of(embeds: torch.Tensor, span: tuple[int, int], tokens: str) -> torch.Tensor:
    """The rows of one prompt that UCE edits or preserves."""
    first, last = span
    if tokens == "trailing":
        return embeds[last:]
    if tokens == "last":
        return embeds[last : last + 1]
    return embeds[first : last + 1]


def aligned(concept: torch.Tensor, span: tuple[int, int], guide: torch.Tensor, guide_last: int, tokens: str):
    """Edit rows of a concept and the guide rows they map to (eq. 8: v* = W_old c_guide)."""
    if tokens == "trailing":
        last = span[1]
        width = len(concept) - max(last, guide_last)
        return concept[last : last + width], guide[guide_last : guide_last + width]
    rows = rows_of(concept, span, tokens)
    return rows, guide[guide_last].expand_as(rows)


def stack_rows(rows: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
    return torch.cat(list(rows)) if rows else torch.zeros(0, dim)


def solve(config, edit, targets, preserve) -> tuple[torch.Tensor, torch.Tensor]:
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


def deltas_from_operator(weights, operator: torch.Tensor, dtype: torch.dtype) -> list[DenseDelta | LowRankDelta]:
    """Factor a d x d update (W_new = W_old (I + operator)) at its numerical rank and expand per layer."""
    u, s, vh = torch.linalg.svd(operator)
    keep = s > s[0] * (1e-12 if dtype == torch.float64 else 1e-6) if s[0] > 0 else s > 0
    rank = max(int(keep.sum()), 1)
    return layer_deltas(weights, u[:, :rank] * s[:rank], vh[:rank], dtype)
