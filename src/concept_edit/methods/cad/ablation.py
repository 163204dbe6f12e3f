"""CAD-Erase and CAD-Amplify (paper 002, Algorithms 1 and 2): set the most attributed weights to zero.

Which entries (`ablation_indices`):
* erase zeroes the largest *positive* scores, amplify the most *negative* ones (an entry of the other sign
  is never zeroed, as in the official `ablate_model`);
* scope `row` (the official default): in every row of a weight (an output unit; a conv filter's row is its
  in_channels x kh x kw entries) the top k = max(1, floor(ratio * row length)) entries. The official count
  int(ratio * row length) is 0 for rows shorter than 1 / ratio (every ShapesSD layer at the default 0.1%,
  and SD-1.4's 320-wide layers), which then are never pruned; here every row gives at least one entry
  when ratio > 0, so a narrow layer's effective share is above `ratio` (the manifest reports it);
  `row_minimum=0` gives the official count (on SD-1.4's ff layers at 0.1% it zeroes about a quarter fewer
  entries: none in the 320- and 640-wide rows);
* scope `tensor` (the official `--flatten_pruning`): the top max(1, floor(ratio * size)) of the whole tensor.

The zeros are stored as sparse changes (flat indices and zero values), so an edit of SD-1.4's
feed-forward layers at 0.1% is a few MB, and reverting restores the exact original entries.
"""

from __future__ import annotations

import math

import torch

from concept_edit.edit.changes import SparseSet
from concept_edit.methods.cad.config import SCOPES


def per_row_count(ratio: float, length: int, minimum: int = 1) -> int:
    """max(minimum, floor(ratio * length)); the 1e-9 keeps 0.29 * 100 from flooring to 28.

    minimum 0 is the official int(ratio * length)."""
    return max(minimum, math.floor(ratio * length + 1e-9))


def ablation_indices(
    score: torch.Tensor, ratio: float, mode: str, scope: str = "row", minimum: int = 1
) -> torch.Tensor:
    """Flat indices (int64, sorted) of the entries to zero in a weight with these scores."""
    if mode not in ("erase", "amplify"):
        raise ValueError(f"CAD ablates for erase or amplify, not {mode!r}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    signed = score.float() if mode == "erase" else -score.float()
    table = signed.reshape(score.shape[0], -1) if scope == "row" else signed.reshape(1, -1)
    k = min(per_row_count(ratio, table.shape[1], minimum), table.shape[1])
    if k == 0:
        return torch.zeros(0, dtype=torch.long)
    values, columns = table.topk(k, dim=1)
    rows = torch.arange(table.shape[0], device=table.device).unsqueeze(1).expand_as(columns)
    flat = (rows * table.shape[1] + columns)[values > 0]
    return flat.sort().values.cpu()


def ablation_changes(
    weights: dict[str, torch.Tensor],
    scores: dict[str, torch.Tensor],
    ratio: float,
    mode: str,
    scope: str = "row",
    minimum: int = 1,
) -> tuple[list[SparseSet], dict[str, int]]:
    """One sparse change per weight that loses entries, and the count zeroed per weight."""
    if not 0 < ratio < 1:
        raise ValueError(f"ratio must be in (0, 1), got {ratio}")
    changes, counts = [], {}
    for name, weight in weights.items():
        index = ablation_indices(scores[name], ratio, mode, scope, minimum)
        counts[name] = len(index)
        if len(index):
            zeros = torch.zeros(len(index), dtype=weight.dtype)
            changes.append(SparseSet.of(name, tuple(weight.shape), index, zeros))
    return changes, counts
