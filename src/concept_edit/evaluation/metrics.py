"""The papers' metrics, in one place, each testable on inputs with a known answer.

* accuracy with counts (UCE Table 2, CAD Table 1: target accuracy vs mean accuracy of the other concepts);
* attribute distribution and UCE's deviation Delta = |p_desired - p_actual| / p_desired, averaged over
  attributes (for two attributes this is exactly the paper's Delta);
* Frechet distance between Gaussian fits of two feature sets (FID's formula; here on the oracle's features);
* image change between paired images: LPIPS (UCE Table 4, Figure 4; CAD Table 5) when the `lpips` package
  and its AlexNet weights are available (the `eval` extra: lpips needs torchvision), otherwise the cosine
  distance of a feature extractor's features (CLIP for real models, the oracle's for ShapesSD), reported
  under that name ("clip-feature-cosine-distance", "oracle-feature-cosine-distance") so it is never
  mistaken for LPIPS.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from concept_edit.evaluation import frechet

log = logging.getLogger(__name__)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a share k / n (honest at 0/n and n/n, unlike the normal interval)."""
    if n < 1:
        raise ValueError("an interval needs at least one observation")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def format_share(cell: dict, *, interval: bool = True, n: bool = True) -> str:
    """A results cell {"accuracy", "ci95", "n"} as "0.25 [0.10, 0.49] (n=16)", for benchmark tables."""
    text = f"{cell['accuracy']:.2f}"
    if interval:
        text += f" [{cell['ci95'][0]:.2f}, {cell['ci95'][1]:.2f}]"
    return text + (f" (n={cell['n']})" if n and "n" in cell else "")


def accuracy(predicted: Sequence[str], expected: Sequence[str]) -> dict:
    """{"accuracy": share of matches, "n": count, "correct": matches, "ci95": [low, high] (Wilson)}."""
    if len(predicted) != len(expected):
        raise ValueError(f"{len(predicted)} predictions for {len(expected)} labels")
    correct = int(sum(p == e for p, e in zip(predicted, expected, strict=True)))
    n = len(expected)
    if not n:
        raise ValueError("no predictions to score")
    low, high = wilson(correct, n)
    return {"accuracy": correct / n, "n": n, "correct": correct, "ci95": [round(low, 4), round(high, 4)]}


def per_concept_accuracy(predicted: Sequence[str], expected: Sequence[str]) -> dict[str, dict]:
    """Accuracy per expected label, in first-seen order."""
    out = {}
    for label in dict.fromkeys(expected):
        idx = [i for i, e in enumerate(expected) if e == label]
        out[label] = accuracy([predicted[i] for i in idx], [label] * len(idx))
    return out


def target_and_others(per_concept: dict[str, dict], target: str) -> tuple[float, float]:
    """(accuracy of `target`, mean accuracy of the other concepts)."""
    if target not in per_concept:
        raise ValueError(f"target {target!r} is not a concept of this suite; its concepts: {', '.join(per_concept)}")
    others = [v["accuracy"] for k, v in per_concept.items() if k != target]
    return per_concept[target]["accuracy"], float(np.mean(others)) if others else float("nan")


def distribution(labels: Sequence[str], attributes: Sequence[str]) -> dict[str, float]:
    """Share of each attribute among `labels` (labels outside `attributes` count in the denominator)."""
    n = len(labels)
    return {a: (sum(label == a for label in labels) / n if n else float("nan")) for a in attributes}


def deviation(shares: dict[str, float], desired: dict[str, float] | None = None) -> float:
    """UCE's Delta = |p_desired - p_actual| / p_desired, averaged over attributes (uniform desired by default)."""
    desired = desired or {a: 1.0 / len(shares) for a in shares}
    return float(np.mean([abs(desired[a] - shares[a]) / desired[a] for a in desired]))


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of Gaussian fits to two (N, D) feature sets
    (`frechet.py` has the same from statistics gathered chunk by chunk)."""
    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError("Frechet distance needs two (N >= 2, D) feature arrays of the same width")
    return frechet.frechet_distance(frechet.stats_of(a), frechet.stats_of(b))


def cosine_distance(features_a: np.ndarray, features_b: np.ndarray) -> np.ndarray:
    """Per-pair 1 - cos(a_i, b_i)."""
    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return 1 - num / np.maximum(den, 1e-12)


def image_change(before: np.ndarray, after: np.ndarray, *, features=None, lpips_size: int | None = None) -> dict:
    """Mean perceptual change between paired (N, H, W, 3) uint8 image sets: {"metric", "mean"} (`pair_change`)."""
    metric, distances = pair_change(before, after, features=features, lpips_size=lpips_size)
    return {"metric": metric, "mean": float(np.mean(distances))}


def pair_change(before: np.ndarray, after: np.ndarray, *, features=None, lpips_size: int | None = None):
    """(metric name, per-pair distances): LPIPS if available, else the cosine distance of `features` (a
    `evaluation.features.FeatureExtractor`; a world's own, such as the shapes oracle's, when the suite names none).
    `lpips_size`: both images resized (bilinear) to that side first, as ESD's LPIPS script reads them at 64 px;
    the metric's name says so ("lpips@64"). ValueError when neither LPIPS nor features are there."""
    lpips_model = _lpips()
    if lpips_model is not None:
        import torch

        def prep(x):
            x = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 127.5 - 1
            if lpips_size is not None:
                x = torch.nn.functional.interpolate(x, size=(lpips_size, lpips_size), mode="bilinear",
                                                    antialias=True, align_corners=False)  # fmt: skip
            return x

        with torch.no_grad():  # in batches: a thousand 512 px pairs would not fit at once
            values = [
                lpips_model(prep(before[i : i + 16]), prep(after[i : i + 16])).flatten()
                for i in range(0, len(before), 16)
            ]
        name = "lpips" if lpips_size is None else f"lpips@{lpips_size}"
        return name, torch.cat(values).double().numpy()
    if features is None:
        raise ValueError("the image change needs LPIPS (pip install 'concept-edit[eval]') or image features")
    distances = cosine_distance(features(before), features(after))
    name = getattr(features, "metric", features.name)  # the shapes oracle's features: "oracle"
    return f"{name}-feature-cosine-distance", distances


def lpips_available() -> bool:
    """Whether `image_change` can measure LPIPS here (the `lpips` package, a working torchvision, its weights)."""
    return _lpips() is not None


@lru_cache(maxsize=1)  # evaluate measures the change chunk by chunk: build the network once
def _lpips():
    """An LPIPS model if the package and its network weights are available offline, else None."""
    try:
        import lpips

        return lpips.LPIPS(net="alex", verbose=False)
    except Exception as err:  # noqa: BLE001 - missing package, broken torchvision or no weights: fall back
        log.debug("LPIPS unavailable (%s); using a feature cosine distance", err)
        return None
