"""The Frechet distance from statistics gathered chunk by chunk, so no suite's features are held at once.

`FrechetStats` keeps n, the sum and the Gram matrix of the features (float64, about a shift: the first chunk's
mean, so a large mean does not cancel the covariance away); its mean and covariance equal `np.mean` and
`np.cov(rowvar=False)` over all features (tested). `frechet_distance` is FID's formula on two fits:
||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from scipy import linalg

log = logging.getLogger(__name__)


class FrechetStats:
    """Running n, sum and Gram matrix of (N, D) feature chunks."""

    def __init__(self) -> None:
        self.n = 0
        self.shift: np.ndarray | None = None
        self.total: np.ndarray | None = None
        self.gram: np.ndarray | None = None

    def add(self, features: np.ndarray) -> FrechetStats:
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2:
            raise ValueError(f"features must be (N, D), got shape {f.shape}")
        if not len(f):
            return self
        if self.shift is None:
            self.shift = f.mean(0)
            self.total, self.gram = np.zeros_like(self.shift), np.zeros((f.shape[1], f.shape[1]))
        elif f.shape[1] != len(self.shift):
            raise ValueError(f"features of width {f.shape[1]} added to statistics of width {len(self.shift)}")
        centred = f - self.shift
        self.n += len(f)
        self.total += centred.sum(0)
        self.gram += centred.T @ centred
        return self

    @property
    def mean(self) -> np.ndarray:
        self._need(1)
        return self.shift + self.total / self.n

    @property
    def cov(self) -> np.ndarray:
        self._need(2)
        m = self.total / self.n
        return (self.gram - self.n * np.outer(m, m)) / (self.n - 1)

    def _need(self, k: int) -> None:
        if self.n < k:
            raise ValueError(f"Frechet statistics need at least {k} feature rows, have {self.n}")


def stats_of(features: np.ndarray) -> FrechetStats:
    return FrechetStats().add(features)


def frechet_distance(a: FrechetStats, b: FrechetStats) -> float:
    """FID's formula on two Gaussian fits (regularised as the FID reference code does when sqrtm fails)."""
    if a.shift is None or b.shift is None or len(a.shift) != len(b.shift) or min(a.n, b.n) < 2:
        raise ValueError("Frechet distance needs two (N >= 2, D) feature sets of the same width")
    mu_a, mu_b, cov_a, cov_b = a.mean, b.mean, a.cov, b.cov
    with warnings.catch_warnings():  # fewer samples than feature dimensions give a singular product: expected
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        eps = np.eye(len(cov_a)) * 1e-6
        covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    if np.abs(covmean.imag).max(initial=0) > 1e-3:  # the FID reference code raises here; a value is still useful
        log.warning("Frechet distance: sqrtm left an imaginary part of %.3g (too few samples for the features' width)",
                    np.abs(covmean.imag).max())  # fmt: skip
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))
