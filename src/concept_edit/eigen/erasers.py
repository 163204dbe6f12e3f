"""Erasers built from `ActivationStatistics`: the paper's top singular directions, and LEACE beside them.

Both return an `ActivationProjection` (the edit file's activation kind), so either is saved, shared, applied
and undone like any edit, on a pipeline or on any torch module (`erased`).

* `svd_eraser` (eq. 4-6): the top-k left singular vectors of the class's stacked activations, removed from
  every activation whatever its class (x -> x - U U^T x). Uncentred by default, as in the paper (its eq. 4
  stacks raw activations); `centre=True` takes them from the class's covariance instead.
* `leace_eraser` (Belrose et al. 2023, through the `concept-erasure` package): the least-squares affine map
  after which no linear probe can tell the class from the rest better than a constant. Its fitter is given the
  moments our running sums already hold (the class indicator z = [label == class]), so one pass of
  statistics serves both erasers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from concept_edit.edit.changes import ActivationProjection, DenseDelta, EditError
from concept_edit.eigen.statistics import ActivationStatistics

LEACE_VERSION = "0.2.4"  # the concept-erasure release whose LeaceFitter fields we fill in


def _class_statistics(stats: ActivationStatistics, layer: str, label):
    layer_stats = stats.layer(layer)
    i = stats.index(label)
    if int(layer_stats.count[i]) == 0:
        raise ValueError(f"class {label!r} has no samples at {layer}")
    return layer_stats, i


def top_directions(stats: ActivationStatistics, layer: str, label, k: int = 1, *, centre: bool = False) -> torch.Tensor:
    """Eq. 4-5: the k leading left singular vectors of the class's activations at `layer` (k x d, float64).

    Computed as the top eigenvectors of the running Gram matrix A A^T (A = [eta^1 ... eta^m]); with `centre`,
    of the scatter matrix around the class mean. Signs are arbitrary, as an SVD's are; projections are not.
    """
    layer_stats, i = _class_statistics(stats, layer, label)
    count = int(layer_stats.count[i])
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > layer_stats.dim:
        raise ValueError(f"k = {k} is larger than the {layer_stats.dim} features at {layer}")
    if k > count - centre:
        raise ValueError(
            f"class {label!r} has {count} feature vectors at {layer}: too few for {k} direction(s)"
            + (" after centring" if centre else "")
        )
    gram = layer_stats.gram[i]
    if centre:
        mean = layer_stats.total[i] / count
        gram = gram - count * torch.outer(mean, mean)
    values, vectors = torch.linalg.eigh(gram)  # ascending
    if values[-k] <= 1e-12 * max(float(values[-1]), 1e-300):
        raise ValueError(f"class {label!r} at {layer}: its activations span fewer than {k} directions")
    return vectors[:, -k:].flip(1).T.contiguous()


def svd_eraser(
    stats: ActivationStatistics, layer: str, labels, k: int = 1, *, centre: bool = False, target: str | None = None
) -> ActivationProjection:
    """Eq. 6: remove the top-k directions of each class in `labels` (one label or several) from every activation.

    Several classes: the span of all their directions (orthonormalised; directions that add nothing are
    dropped). Centred, the projection is taken around the classes' mean mu: x -> x - U U^T (x - mu), so the
    mean itself is kept (the affine form of the activation change); uncentred it is eq. 6, x -> x - U U^T x.
    """
    labels = list(labels) if isinstance(labels, list | tuple) else [labels]
    stacked = torch.cat([top_directions(stats, layer, label, k, centre=centre) for label in labels])
    u, s, _ = torch.linalg.svd(stacked.T, full_matrices=False)
    directions = u[:, s > 1e-6 * s[0]].T.float().contiguous()
    if not centre:
        return ActivationProjection(target or layer, directions, stats.site, stats.feature_dims)
    layer_stats = stats.layer(layer)
    rows = [stats.index(label) for label in labels]
    mean = layer_stats.total[rows].sum(0) / layer_stats.count[rows].sum()
    return ActivationProjection(
        target or layer, directions, stats.site, stats.feature_dims, back=directions, bias=mean.float().contiguous()
    )


def leace_eraser(stats: ActivationStatistics, layer: str, labels, *, target: str | None = None) -> ActivationProjection:
    """LEACE for the indicators [class == label] (one per label) against the other recorded classes.

    Returns the eraser as an affine activation edit: x -> x - ((x - bias) V^T) B (`ActivationProjection`).
    """
    try:
        from concept_erasure import LeaceFitter
    except ImportError as err:
        raise ImportError("LEACE needs the concept-erasure package: pip install 'concept-edit[eigen]'") from err
    labels = list(labels) if isinstance(labels, list | tuple) else [labels]
    layer_stats = stats.layer(layer)
    rows = [_class_statistics(stats, layer, label)[1] for label in labels]
    n = int(layer_stats.count.sum())
    if int(layer_stats.count[rows].sum()) == n:
        raise ValueError(f"LEACE at {layer} needs samples of other classes than {labels} to tell them apart from")
    mean = layer_stats.total.sum(0) / n
    counts = layer_stats.count[rows].double()
    fitter = LeaceFitter(layer_stats.dim, len(rows), dtype=torch.float64)
    # LeaceFitter's running sums (Welford): n, the means, sum (x - mean)(x - mean)^T and sum (x - mean)(z - mean_z)
    fitter.n = torch.tensor(n)
    fitter.mean_x = mean
    fitter.mean_z = counts / n
    fitter.sigma_xx_ = layer_stats.gram.sum(0) - n * torch.outer(mean, mean)
    fitter.sigma_xz_ = (layer_stats.total[rows] - counts[:, None] * mean).T.contiguous()
    eraser = fitter.eraser
    keep = eraser.proj_left.abs().sum(0) > 0  # columns the fitter zeroed (singular values under its tolerance)
    if not bool(keep.any()):
        raise ValueError(f"LEACE at {layer}: {labels} are not linearly detectable there; nothing to erase")
    return ActivationProjection(
        target or layer,
        eraser.proj_right[keep].float().contiguous(),
        stats.site,
        stats.feature_dims,
        back=eraser.proj_left.T[keep].float().contiguous(),
        bias=eraser.bias.float().contiguous(),
    )


def fold(change: ActivationProjection, module: nn.Module) -> list[DenseDelta]:
    """The weight deltas of a linear layer that make its output what `change` makes of it, exactly.

    Output y = W h + c; the edit maps y to y - B^T V (y - b), so W' = W - B^T V W and c' = c - B^T V (c - b).
    Only a projection of an `nn.Linear`'s output folds this way (conv maps, inputs and tuple outputs do not).
    """
    if not isinstance(module, nn.Linear) or change.site != "output" or change.feature_dims != 1:
        raise EditError(
            f"cannot fold the activation edit at {change.target} into weights: only the output of an nn.Linear "
            f"folds exactly (this is a {type(module).__name__}'s {change.site}); keep it as a hook"
        )
    v = change.directions.double()
    operator = change.matrix_back.double().T @ v  # B^T V, d x d
    weight = module.weight.detach().double()
    deltas = [DenseDelta(f"{change.target}.weight", (-(operator @ weight)).to(module.weight.dtype))]
    if module.bias is not None or change.bias is not None:
        if module.bias is None:
            raise EditError(f"cannot fold the affine edit at {change.target}: the layer has no bias to absorb it")
        c = module.bias.detach().double()
        b = torch.zeros_like(c) if change.bias is None else change.bias.double()
        deltas.append(DenseDelta(f"{change.target}.bias", (-(operator @ (c - b))).to(module.bias.dtype)))
    return deltas


@contextmanager
def erased(root: nn.Module | Callable[[str], nn.Module], changes: Sequence[ActivationProjection]) -> Iterator[None]:
    """Install activation edits on `root`'s submodules (paths as in the changes) for the block; always removed."""
    find = root.get_submodule if isinstance(root, nn.Module) else root
    undos = []
    try:
        for change in changes:
            try:
                module = find(change.target)
            except (AttributeError, KeyError) as err:
                raise ValueError(f"no module at {change.target!r}") from err
            undos.append(change.install(module))
        yield
    finally:
        for undo in reversed(undos):
            undo.run()
