"""How good is the first-order estimate? (paper 002, section 6.1 and Figure 2)

Ablate random small subsets S of the attributed weights, measure the actual change J(w) - J(w, w_S = 0) on
the same samples the scores were computed on, and compare it with the predicted sum_{i in S} score_i
(eq. 3). The base term of eq. 4 stays at its stored value (it is the constant sg makes it for the
gradient), so both sides describe the same objective. The paper repeats this 1000 times on SD-1.4.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from concept_edit.methods.cad.attribution import objective_value


@dataclass(frozen=True)
class CheckResult:
    predicted: np.ndarray  # sum of the subset's scores
    actual: np.ndarray  # J(w) - J(w with the subset zeroed)
    pearson: float
    subset_size: int

    def to_dict(self) -> dict:
        return {
            "pearson_r": self.pearson,
            "subsets": len(self.actual),
            "subset_size": self.subset_size,
            "predicted": [round(float(v), 8) for v in self.predicted],
            "actual": [round(float(v), 8) for v in self.actual],
        }


@torch.no_grad()
def approximation_check(pipe, attribution, *, subsets: int, fraction: float, seed: int = 0,
                        progress: bool = False) -> CheckResult:  # fmt: skip
    """`subsets` random subsets, each `fraction` of the attributed entries drawn uniformly without replacement."""
    if subsets < 3:
        raise ValueError(f"subsets must be at least 3 for a correlation, got {subsets}")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    names = list(attribution.weights)
    sizes = np.array([attribution.weights[n].numel() for n in names])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    total = int(offsets[-1])
    size = max(1, round(fraction * total))
    flat_scores = torch.cat([attribution.scores[n].reshape(-1).double().cpu() for n in names])
    samples, cond, objective = attribution.samples, attribution.cond, attribution.objective
    base = objective_value(pipe, samples, cond, objective)
    rng = np.random.default_rng([seed, 31])
    predicted, actual = [], []
    for _ in tqdm(range(subsets), desc="cad: approximation check", disable=not progress, leave=False):
        chosen = np.sort(rng.choice(total, size, replace=False))
        predicted.append(float(flat_scores[torch.from_numpy(chosen)].sum()))
        saved = []
        try:
            for k, name in enumerate(names):
                lo, hi = np.searchsorted(chosen, [offsets[k], offsets[k + 1]])
                if hi > lo:
                    flat = attribution.weights[name].view(-1)  # through the parameter: its version moves
                    index = torch.from_numpy(chosen[lo:hi] - offsets[k]).to(flat.device)
                    saved.append((flat, index, flat[index].clone()))
                    flat[index] = 0
            actual.append(base - objective_value(pipe, samples, cond, objective))
        finally:
            for flat, index, values in saved:
                flat[index] = values  # the exact original entries
    predicted_a, actual_a = np.array(predicted), np.array(actual)
    varied = predicted_a.std() > 0 and actual_a.std() > 0
    r = float(np.corrcoef(predicted_a, actual_a)[0, 1]) if varied else float("nan")
    return CheckResult(predicted_a, actual_a, r, size)


def scatter_plot(result: CheckResult, path, title: str) -> None:
    """Predicted against actual change of J, with the identity line and r, as a PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from concept_edit.io import atomic_path

    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=120)
    ax.scatter(result.predicted, result.actual, s=10, alpha=0.7)
    low = min(result.predicted.min(), result.actual.min())
    high = max(result.predicted.max(), result.actual.max())
    ax.plot([low, high], [low, high], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("predicted: sum of scores (eq. 3)")
    ax.set_ylabel("actual: J(w) - J(w, subset = 0)")
    ax.set_title(f"{title}\nPearson r = {result.pearson:.3f} ({len(result.actual)} subsets of {result.subset_size})")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
