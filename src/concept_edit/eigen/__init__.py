"""Eigen-direction erasure (paper 000) for any torch module: statistics by hooks, erasers, folding into weights."""

from concept_edit.eigen.erasers import erased, fold, leace_eraser, svd_eraser, top_directions
from concept_edit.eigen.statistics import ActivationStatistics, recording

__all__ = ["ActivationStatistics", "erased", "fold", "leace_eraser", "recording", "svd_eraser", "top_directions"]
