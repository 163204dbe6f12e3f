"""Streaming per-class activation statistics, gathered by forward hooks on any torch module.

Eq. 4 of the eigen-direction paper stacks the activations of m samples of a class, [eta^1 ... eta^m] = U S V^T,
and keeps U's leading columns. U's columns are the eigenvectors of A A^T = sum_j eta^j eta^j^T, so a running
Gram matrix per class and layer (d x d, float64) gives the same directions without keeping any activation:
memory is d^2 per class whatever m is. The sum and count ride along, for centring (an option; the paper
does not centre) and for LEACE, whose moments (mean, covariance, cross-covariance with a class indicator)
are all functions of these per-class sums.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from concept_edit.validation import check_choice

SITES = ("output", "input")


class NonFiniteActivations(ValueError):
    """A recorded activation was NaN or infinite: one such value makes every statistic of its layer NaN."""


@dataclass
class LayerStatistics:
    """One layer's running sums: per class the Gram matrix, the sum and the count of its feature vectors."""

    dim: int
    classes: int
    gram: torch.Tensor = field(init=False)
    total: torch.Tensor = field(init=False)
    count: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.gram = torch.zeros(self.classes, self.dim, self.dim, dtype=torch.float64)
        self.total = torch.zeros(self.classes, self.dim, dtype=torch.float64)
        self.count = torch.zeros(self.classes, dtype=torch.long)

    def update(self, rows: torch.Tensor, label: int) -> None:
        rows = rows.detach().to("cpu", torch.float64)
        self.gram[label] += rows.T @ rows
        self.total[label] += rows.sum(0)
        self.count[label] += len(rows)


class ActivationStatistics:
    """Running statistics of chosen layers' activations, split by class.

    `layers` are module paths (relative to the root given to `recording`); `feature_dims` is how many trailing
    axes make one feature vector (1 for linear and attention outputs: every token is a vector; 3 for a conv
    map C x H x W, as the paper treats CNN activations). Recording takes class *indices* (positions in
    `classes`, as a classifier's targets are); the erasers take the class values themselves.
    """

    def __init__(
        self,
        layers: Sequence[str],
        classes: Sequence,
        *,
        site: str = "output",
        feature_dims: int = 1,
    ) -> None:
        if not layers:
            raise ValueError("no layer given: name at least one module path to record")
        if len(set(classes)) != len(classes) or not classes:
            raise ValueError(f"classes must be distinct and at least one, got {list(classes)}")
        check_choice("site", site, SITES)
        if not isinstance(feature_dims, int) or feature_dims < 1:
            raise ValueError(f"feature_dims must be a positive integer, got {feature_dims!r}")
        self.layers, self.classes = list(layers), list(classes)
        self.site, self.feature_dims = site, feature_dims
        self.per_layer: dict[str, LayerStatistics] = {}

    def index(self, label) -> int:
        if label not in self.classes:
            raise ValueError(f"unknown class {label!r}; the classes are {self.classes}")
        return self.classes.index(label)

    def add(self, layer: str, x: torch.Tensor, labels: torch.Tensor | int) -> None:
        """Add a batch of activations `x` (batch first) whose samples have class indices `labels` (or one index)."""
        if x.dim() <= self.feature_dims:
            raise ValueError(f"{layer}: activation of shape {tuple(x.shape)} has no batch axis before its features")
        dim = math.prod(x.shape[x.dim() - self.feature_dims :])
        stats = self.per_layer.get(layer)
        if stats is None:
            stats = self.per_layer[layer] = LayerStatistics(dim, len(self.classes))
        if stats.dim != dim:
            raise ValueError(f"{layer}: features of size {dim}, earlier batches had {stats.dim}")
        if not bool(torch.isfinite(x).all()):  # found here, not as a LinAlgError from the eigensolver later
            raise NonFiniteActivations(f"the activations at {layer} are NaN or infinite")
        x = x.reshape(x.shape[0], -1, dim)
        labels = torch.as_tensor(labels).reshape(-1)
        if len(labels) == 1 and len(x) != 1:
            labels = labels.expand(len(x))
        if len(labels) != len(x):
            raise ValueError(f"{layer}: {len(labels)} labels for a batch of {len(x)}")
        if labels.is_floating_point() or bool(((labels < 0) | (labels >= len(self.classes))).any()):
            raise ValueError(f"labels are class indices 0..{len(self.classes) - 1}; got {labels.unique().tolist()}")
        for label in labels.unique().tolist():
            stats.update(x[labels == label].reshape(-1, dim), int(label))

    def layer(self, layer: str) -> LayerStatistics:
        if layer not in self.per_layer:
            raise ValueError(f"no activation was recorded at {layer!r}; recorded: {sorted(self.per_layer) or 'none'}")
        return self.per_layer[layer]

    def samples(self, layer: str, label) -> int:
        return int(self.layer(layer).count[self.index(label)])


class Recording:
    """What the hooks read: the class (index) of the samples in the next forward call, and whether to record."""

    def __init__(self) -> None:
        self.labels: torch.Tensor | int | None = None
        self.enabled = True


@contextmanager
def recording(stats: ActivationStatistics, resolve: Callable[[str], nn.Module] | nn.Module) -> Iterator[Recording]:
    """Hook every layer of `stats`; set `.labels` before each forward. The hooks are always removed.

    `resolve` is the root module (paths are its submodule names) or a function from path to module (a
    pipeline's components, for example).
    """
    find = resolve.get_submodule if isinstance(resolve, nn.Module) else resolve
    modules = {}
    for path in stats.layers:
        try:
            modules[path] = find(path)
        except (AttributeError, KeyError) as err:
            raise ValueError(f"no module at {path!r}") from err
    state = Recording()

    def hook_for(path: str):
        def record(value) -> None:
            if not state.enabled:
                return
            if state.labels is None:
                raise RuntimeError("set recording.labels before running the model")
            if isinstance(value, tuple):
                value = value[0]
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{path}: its {stats.site} is a {type(value).__name__}, not a tensor")
            stats.add(path, value, state.labels)

        return record

    handles = []
    try:
        for path, module in modules.items():
            record = hook_for(path)
            if stats.site == "output":
                handles.append(module.register_forward_hook(lambda _m, _a, out, record=record: record(out)))
            else:
                handles.append(module.register_forward_pre_hook(lambda _m, args, record=record: record(_first(args))))
        yield state
    finally:
        for handle in handles:
            handle.remove()


def _first(args: tuple):
    if not args:
        raise ValueError(
            "the module was called without a positional input to record; use site='output' on the one before"
        )
    return args[0]
