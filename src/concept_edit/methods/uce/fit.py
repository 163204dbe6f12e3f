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

import torch

from concept_edit.edit import Edit
from concept_edit.methods.registry import EditRequest, register
from concept_edit.methods.uce.closed_form import (  # noqa: F401 - re-exported for callers of the method
    aligned,
    concept_span,
    encode,
    layer_deltas,
    rows_of,
    solve,
    stack_rows,
    target_weights,
    uce_operator,
)
from concept_edit.methods.uce.config import TOKEN_MODES, UCEConfig, UCEInputs  # noqa: F401 - re-exported
from concept_edit.methods.uce.debias import debias
from concept_edit.models.prompts import (
    forces_zero_unconditional,
    unconditional_embedding,
)
from concept_edit.validation import check_unused

log = logging.getLogger(__name__)

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
    embeds, spans = encode(pipe, prompts, config.tokens, padded=padded)
    encode_s = time.perf_counter() - started
    n, g = len(request.concepts), len(unique)
    if moderate:  # what the pipeline really feeds as unconditional: SDXL's is zeros, not the encoded ""
        embeds[n] = unconditional_embedding(pipe, embeds[n])
    at = {guide: n + k for k, guide in enumerate(unique)}
    pairs = [
        aligned(embeds[i], spans[i], embeds[at[guides[i]]], spans[at[guides[i]]][1], config.tokens) for i in range(n)
    ]
    edit = torch.cat([c for c, _ in pairs])
    targets = torch.cat([t for _, t in pairs])
    preserve_rows = [rows_of(embeds[j], spans[j], config.tokens) for j in range(n + g, len(prompts))]
    preserve = stack_rows(preserve_rows, edit.shape[1])
    started = time.perf_counter()
    u, v = solve(config, edit, targets, preserve)
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


