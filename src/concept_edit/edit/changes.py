"""The four kinds of change an edit holds; each names its target and knows how to apply and undo itself.

| kind          | what it does                                              | who makes it                    |
|---------------|-----------------------------------------------------------|---------------------------------|
| `dense`       | W += delta                                                | fine-tuning (ESD, Sel. Amnesia) |
| `low_rank`    | W += (up @ down).reshape(W.shape)                         | UCE's closed form, LoRA factors |
| `sparse`      | W.flat[indices] = values                                  | pruning masks (CAD ablation)    |
| `activation`  | x -> x - V^T V x on a module's output (or input), V's rows | eigen-direction erasure         |
|               | orthonormal, through a removable forward hook; or the     | (paper 000, eq. 6); LEACE       |
|               | oblique affine x -> x - B^T V (x - b) (LEACE's eraser)    |                                 |

Weight changes target a pipeline-relative parameter path (`unet.conv_in.weight`); an activation change a
module path (`unet.mid_block.attentions.0.transformer_blocks.0.attn2`). A change lists its tensors by
part name (`parts()`) and describes itself for the manifest (`info()`); `change_from_parts` rebuilds it
from both and validates shapes, dtypes, index ranges and orthonormality, so a file the library cannot use
is refused before anything is applied. Applying returns an `Undo` that restores the exact original
bytes (a copy of the changed tensor, or of the changed entries for a sparse change) or removes the hook.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from concept_edit.edit.manifest import check_change_kind

FLOAT_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
INDEX_DTYPES = {"int32": torch.int32, "int64": torch.int64}
SITES = ("output", "input")


class EditError(ValueError):
    """An edit that cannot be read, or that does not belong to the model it is applied to."""


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class Undo:
    """What `revert` runs to take one change back."""

    def __init__(self, run: Callable[[], None]) -> None:
        self.run = run


# -- weight changes --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class DenseDelta:
    """W += delta, for a parameter of any shape."""

    kind: ClassVar[str] = "dense"
    target: str
    delta: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.delta.shape)

    def parts(self) -> dict[str, torch.Tensor]:
        return {"delta": self.delta}

    def info(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "shape": list(self.shape),
            "dtype": dtype_name(self.delta.dtype),
        }

    @staticmethod
    def expected_parts(info: dict) -> dict[str, tuple[int, ...]]:
        return {"delta": tuple(info["shape"])}

    def materialize(self) -> torch.Tensor:
        return self.delta

    def stored_as(self, dtype: torch.dtype) -> DenseDelta:
        return DenseDelta(self.target, self.delta.detach().to(dtype).contiguous())

    def apply_(self, param: torch.Tensor, undo: list[Undo]) -> None:
        _add_in_place(param, self.materialize(), undo)


@dataclass(frozen=True, eq=False)
class LowRankDelta:
    """W += (up @ down).reshape(W.shape): up is (W.shape[0], rank), down (rank, prod(W.shape[1:]))."""

    kind: ClassVar[str] = "low_rank"
    target: str
    up: torch.Tensor
    down: torch.Tensor
    shape: tuple[int, ...]

    @property
    def rank(self) -> int:
        return int(self.up.shape[1])

    def parts(self) -> dict[str, torch.Tensor]:
        return {"up": self.up, "down": self.down}

    def info(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "shape": list(self.shape),
            "rank": self.rank,
            "dtype": dtype_name(self.up.dtype),
        }

    @staticmethod
    def expected_parts(info: dict) -> dict[str, tuple[int, ...]]:
        shape, rank = tuple(info["shape"]), _positive_int(info, "rank")
        return {"up": (shape[0], rank), "down": (rank, math.prod(shape[1:]))}

    def materialize(self) -> torch.Tensor:
        compute = torch.float64 if self.up.dtype == torch.float64 else torch.float32
        return (self.up.to(compute) @ self.down.to(compute)).reshape(self.shape)

    def stored_as(self, dtype: torch.dtype) -> LowRankDelta:
        return LowRankDelta(self.target, self.up.to(dtype).contiguous(), self.down.to(dtype).contiguous(), self.shape)

    def apply_(self, param: torch.Tensor, undo: list[Undo]) -> None:
        _add_in_place(param, self.materialize(), undo)

    @staticmethod
    def compact(target: str, up: torch.Tensor, down: torch.Tensor, shape: tuple[int, ...]) -> DenseDelta | LowRankDelta:
        """Keep the factors when they are smaller than the dense matrix, else multiply them out."""
        rows, rank, cols = up.shape[0], up.shape[1], down.shape[1]
        if rank * (rows + cols) < rows * cols:
            return LowRankDelta(target, up.contiguous(), down.contiguous(), tuple(shape))
        dense = (up.double() @ down.double()).reshape(shape).to(up.dtype)
        return DenseDelta(target, dense)


@dataclass(frozen=True, eq=False)
class SparseSet:
    """W.flat[indices] = values: exact, and reverted from a copy of only the entries it changes."""

    kind: ClassVar[str] = "sparse"
    target: str
    indices: torch.Tensor  # 1-d, int32 or int64, unique, into the flattened parameter
    values: torch.Tensor  # 1-d, as long as indices
    shape: tuple[int, ...]

    def parts(self) -> dict[str, torch.Tensor]:
        return {"indices": self.indices, "values": self.values}

    def info(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "shape": list(self.shape),
            "count": len(self.indices),
            "dtype": dtype_name(self.values.dtype),
        }

    @staticmethod
    def expected_parts(info: dict) -> dict[str, tuple[int, ...]]:
        count = _non_negative_int(info, "count")
        return {"indices": (count,), "values": (count,)}

    @staticmethod
    def of(target: str, shape: tuple[int, ...], indices: torch.Tensor, values: torch.Tensor) -> SparseSet:
        """Indices made unique (a later value wins), sorted, and stored as int32 where they fit."""
        indices, values = indices.reshape(-1).long(), values.reshape(-1)
        order = torch.argsort(indices, stable=True)
        indices, values = indices[order], values[order]
        keep = torch.ones(len(indices), dtype=torch.bool)
        keep[:-1] = indices[1:] != indices[:-1]  # the last of each run of equal indices is the latest value
        index_dtype = torch.int32 if math.prod(shape) < 2**31 else torch.int64
        return SparseSet(target, indices[keep].to(index_dtype), values[keep].contiguous(), tuple(shape))

    def stored_as(self, dtype: torch.dtype) -> SparseSet:
        return SparseSet(self.target, self.indices, self.values.to(dtype).contiguous(), self.shape)

    def apply_(self, param: torch.Tensor, undo: list[Undo]) -> None:
        if not param.is_contiguous():
            raise EditError(
                f"sparse change for {self.target}: the parameter is not contiguous (channels_last?); "
                "apply the edit before changing the model's memory format"
            )
        index = self.indices.to(param.device, torch.long)
        old = param.view(-1)[index].to("cpu", copy=True)

        def restore() -> None:  # resolves the parameter's storage now: the model may have moved since
            param.view(-1).index_copy_(0, index.to(param.device), old.to(param.device, param.dtype))

        undo.append(Undo(restore))  # recorded before the write, so an interrupt can always be taken back
        param.view(-1)[index] = self.values.to(param.device, param.dtype)  # through the parameter: version moves


def _add_in_place(param: torch.Tensor, delta: torch.Tensor, undo: list[Undo]) -> None:
    """param += delta in place, rounding once to the parameter's dtype; the undo copies the original back.

    The copy is kept on the CPU, so applying a whole-model edit on a GPU costs no extra GPU memory, and the undo
    is recorded before the write, so an interrupt in between can always be taken back.
    """
    snapshot = param.detach().to("cpu", copy=True)
    undo.append(Undo(lambda: param.copy_(snapshot)))
    param.add_(delta.to(param.device))  # under no_grad; not .data, whose writes the version counter misses


# -- activation changes ----------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ActivationProjection:
    """Remove the span of `directions` (k x d, orthonormal rows) from a module's output or input (eq. 6).

    The feature vector is the last `feature_dims` axes flattened (1 for linear and attention outputs, where
    every token is projected; 3 for a conv layer's C x H x W map, as the paper does for CNNs). A module
    whose output is a tuple has its first element projected.

    With `back` (k x d) and `bias` (d) it is the oblique affine map x -> x - ((x - bias) V^T) B, the form of
    a LEACE eraser (Belrose et al. 2023: `proj_right` = V, `proj_left` = B^T); `directions` then need not be
    orthonormal. Without them, B = V and bias = 0: eq. 6's orthogonal projection.
    """

    kind: ClassVar[str] = "activation"
    target: str
    directions: torch.Tensor
    site: str = "output"
    feature_dims: int = 1
    back: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    @staticmethod
    def of(target: str, directions: torch.Tensor, site: str = "output", feature_dims: int = 1) -> ActivationProjection:
        """Orthonormalise the rows of `directions` (QR), so that one direction is eq. 6's u / |u| exactly."""
        directions = torch.atleast_2d(directions)
        q, r = torch.linalg.qr(directions.double().T)
        if (r.diagonal().abs() <= 1e-12 * r.diagonal().abs().max().clamp(min=1e-300)).any():
            raise ValueError(f"activation edit at {target}: the directions are linearly dependent")
        return ActivationProjection(target, q.T.to(directions.dtype).contiguous(), site, feature_dims)

    @property
    def rank(self) -> int:
        return int(self.directions.shape[0])

    @property
    def matrix_back(self) -> torch.Tensor:
        """B: the rows the read-out components are subtracted along (V itself for an orthogonal projection)."""
        return self.directions if self.back is None else self.back

    def parts(self) -> dict[str, torch.Tensor]:
        extra = {"back": self.back, "bias": self.bias}
        return {"directions": self.directions, **{k: v for k, v in extra.items() if v is not None}}

    def info(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "site": self.site,
            "feature_dims": self.feature_dims,
            "rank": self.rank,
            "dim": int(self.directions.shape[1]),
            "dtype": dtype_name(self.directions.dtype),
            "oblique": self.back is not None,
            "affine": self.bias is not None,
        }

    @staticmethod
    def expected_parts(info: dict) -> dict[str, tuple[int, ...]]:
        rank, dim = _positive_int(info, "rank"), _positive_int(info, "dim")
        for flag in ("oblique", "affine"):
            if not isinstance(info.get(flag, False), bool):
                raise EditError(f"change for {info.get('target')!r}: field {flag!r} must be true or false")
        parts = {"directions": (rank, dim)}
        if info.get("oblique", False):
            parts["back"] = (rank, dim)
        if info.get("affine", False):
            parts["bias"] = (dim,)
        return parts

    def stored_as(self, dtype: torch.dtype) -> ActivationProjection:
        def cast(t):
            return None if t is None else t.to(dtype).contiguous()

        return ActivationProjection(
            self.target, cast(self.directions), self.site, self.feature_dims, cast(self.back), cast(self.bias)
        )

    def project(self, x: torch.Tensor, cache: dict) -> torch.Tensor:
        dim = self.directions.shape[1]
        features = math.prod(x.shape[x.dim() - self.feature_dims :]) if x.dim() >= self.feature_dims else -1
        if features != dim:
            raise EditError(
                f"activation edit at {self.target} projects {dim}-d features, but the module's {self.site} has "
                f"shape {tuple(x.shape)} (last {self.feature_dims} axes: {features})"
            )
        key = (x.device, x.dtype)
        if key not in cache:
            bias = None if self.bias is None else self.bias.to(x.device, x.dtype)
            cache[key] = (self.directions.to(x.device, x.dtype), self.matrix_back.to(x.device, x.dtype), bias)
        v, b, bias = cache[key]
        flat = x.reshape(*x.shape[: x.dim() - self.feature_dims], dim)
        read = flat if bias is None else flat - bias
        return (flat - (read @ v.T) @ b).reshape(x.shape)

    def install(self, module: nn.Module) -> Undo:
        cache: dict = {}

        def project_first(value):
            if isinstance(value, tuple) and value and isinstance(value[0], torch.Tensor):
                return (self.project(value[0], cache), *value[1:])
            if isinstance(value, torch.Tensor):
                return self.project(value, cache)
            raise EditError(
                f"activation edit at {self.target}: the module's {self.site} is a {type(value).__name__}, not a "
                "tensor; hook a module that returns one (e.g. an attention module, not the whole UNet)"
            )

        if self.site == "output":
            handle = module.register_forward_hook(lambda _m, _args, out: project_first(out))
        else:

            def project_input(_module, args):
                if not args:
                    raise EditError(
                        f"activation edit at {self.target}: the module was called without a positional input to "
                        "project; use site='output' on the module before it"
                    )
                return (project_first(args[0]), *args[1:])

            handle = module.register_forward_pre_hook(project_input)
        return Undo(handle.remove)


KINDS: dict[str, type] = {c.kind: c for c in (DenseDelta, LowRankDelta, SparseSet, ActivationProjection)}
WEIGHT_KINDS = ("dense", "low_rank", "sparse")
Change = DenseDelta | LowRankDelta | SparseSet | ActivationProjection


# -- reading a change back -------------------------------------------------------------------------------------
def _positive_int(info: dict, key: str) -> int:
    value = info.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise EditError(f"change for {info.get('target')!r}: field {key!r} must be a positive integer, got {value!r}")
    return value


def _non_negative_int(info: dict, key: str) -> int:
    value = info.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise EditError(f"change for {info.get('target')!r}: field {key!r} must be an integer >= 0, got {value!r}")
    return value


def check_info(info: Any) -> type:
    """Validate a manifest entry's fields (not its tensors); returns the change class. EditError if unusable."""
    kind, target = check_change_kind(info, EditError), info.get("target")
    if not isinstance(target, str) or not target:
        raise EditError(f"a {kind} change has no target path")
    if info.get("dtype") not in FLOAT_DTYPES:
        raise EditError(f"change for {target}: unknown dtype {info.get('dtype')!r}; known: {', '.join(FLOAT_DTYPES)}")
    if kind == "activation":
        if info.get("site") not in SITES:
            raise EditError(f"activation change for {target}: site must be one of {SITES}, got {info.get('site')!r}")
        _positive_int(info, "feature_dims")
    else:
        shape = info.get("shape")
        if not isinstance(shape, list) or not shape or not all(isinstance(s, int) and s > 0 for s in shape):
            raise EditError(f"change for {target}: 'shape' must be a list of positive integers, got {shape!r}")
    KINDS[kind].expected_parts(info)  # checks the kind's own size fields
    return KINDS[kind]


def change_from_parts(info: dict, parts: dict[str, torch.Tensor]) -> Change:
    """Rebuild a change from its manifest entry and tensors, validating everything it can without a model."""
    cls = check_info(info)
    target = info["target"]
    for name, shape in cls.expected_parts(info).items():
        tensor = parts.get(name)
        if tensor is None:
            raise EditError(f"change for {target}: tensor {name!r} is missing")
        if tuple(tensor.shape) != shape:
            raise EditError(f"change for {target}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {shape}")
        wanted = INDEX_DTYPES if name == "indices" else FLOAT_DTYPES
        if dtype_name(tensor.dtype) not in wanted:
            raise EditError(
                f"change for {target}: tensor {name!r} has dtype {tensor.dtype}; expected {', '.join(wanted)}"
            )
        if name != "indices" and not torch.isfinite(tensor).all():
            raise EditError(f"change for {target}: tensor {name!r} holds NaN or infinite values")
    if cls is DenseDelta:
        return DenseDelta(target, parts["delta"])
    if cls is LowRankDelta:
        return LowRankDelta(target, parts["up"], parts["down"], tuple(info["shape"]))
    if cls is SparseSet:
        indices, numel = parts["indices"], math.prod(info["shape"])
        if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= numel):
            raise EditError(
                f"sparse change for {target}: an index is out of range [0, {numel}) "
                f"(min {int(indices.min())}, max {int(indices.max())})"
            )
        if len(indices) > 1 and not bool((indices[1:] > indices[:-1]).all()):
            raise EditError(f"sparse change for {target}: indices must be sorted and unique")
        return SparseSet(target, indices, parts["values"], tuple(info["shape"]))
    directions = parts["directions"]
    if info.get("oblique", False) or info.get("affine", False):
        return ActivationProjection(
            target, directions, info["site"], info["feature_dims"], parts.get("back"), parts.get("bias")
        )
    gram = directions.double() @ directions.double().T
    tolerance = 1e-4 if directions.dtype in (torch.float32, torch.float64) else 2e-2
    if (gram - torch.eye(len(gram), dtype=gram.dtype)).abs().max() > tolerance:
        raise EditError(f"activation change for {target}: the directions are not orthonormal")
    return ActivationProjection(target, directions, info["site"], info["feature_dims"])
