"""`trainable`: let a fine-tuning method train a pipeline's weights and hand back the change as an `Edit`.

    with trainable(pipe, parameters_by_role(pipe, "cross-attn")) as tuned:
        optimizer = torch.optim.Adam(tuned.parameters, lr=1e-5)
        ...                                   # train: the pipeline's forward sees the tuned weights
    edit = tuned.edit(method="esd", config=..., request=..., seed=seed)

On leaving the block, always (also when training raised or was interrupted), the pipeline gets its
original weights back, bit for bit, and its `requires_grad` flags as they were. The difference is kept as
the change of the chosen kind:

* `dense`: the trained parameters themselves are optimised; the edit holds trained - original (stored in
  the parameter's dtype unless `Tuning.edit(dtype=...)` says otherwise);
* `low_rank`: peft LoRA adapters (rank `rank`, scale `alpha / rank`, float32 whatever the model's dtype) are
  injected into the Linear / Conv2d modules that own the given weights and only they are optimised; the
  edit holds their factors (`up = B * scale`, `down = A`); the adapters are removed on leaving.

While the block is open no edit can be created from, or applied to, the tuned weights.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from concept_edit.edit.changes import Change, DenseDelta, EditError, LowRankDelta
from concept_edit.edit.file import Edit, get_module
from concept_edit.edit.state import mark_written, state_of
from concept_edit.models.targets import get_parameter

KINDS = ("dense", "low_rank")
ADAPTER = "concept_edit"


@dataclass
class Tuning:
    """What a method trains (`parameters`), and after the block, the change it made (`edit()`)."""

    pipe: object
    kind: str
    parameters: list[nn.Parameter]
    changes: list[Change] | None = None  # set when the block ends without an error
    stats: dict = field(default_factory=dict)
    # dense: the original value of each trained parameter (a CPU copy kept for the delta and the revert),
    # read-only; a method that needs the original values (ESD's frozen model, EWC's theta*) reads them here
    # instead of keeping another copy of the trained tensors (on the CPU, where they would be counted twice)
    originals: dict[int, torch.Tensor] = field(default_factory=dict)  # id(parameter) -> its original value

    def original(self, param: nn.Parameter, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The parameter's original value on its device and in `dtype` (its own by default): the kept copy
        itself where that matches (no new memory), else a converted copy."""
        kept = self.originals.get(id(param))
        dtype = dtype or param.dtype
        if kept is None:
            return param.detach().to(dtype, copy=True)
        return kept if kept.device == param.device and kept.dtype == dtype else kept.to(param.device, dtype)

    def edit(
        self, *, method: str, config: dict, request: dict, seed: int | None, stats: dict | None = None, dtype=None
    ):
        """The `Edit` of what training changed, against the original weights the pipeline has again."""
        if self.changes is None:
            raise EditError("the trainable() block has not finished (or it raised): there is no trained change")
        if not self.changes:
            raise EditError("training changed no weight: there is nothing to save as an edit")
        return Edit.create(
            self.pipe, self.changes, method=method, config=config, request=request, seed=seed, stats=stats, dtype=dtype
        )


@contextlib.contextmanager
def trainable(
    pipe,
    params: Iterable[str] | Mapping[str, nn.Parameter],
    *,
    kind: str = "dense",
    rank: int = 4,
    alpha: float | None = None,
) -> Iterator[Tuning]:
    """Open the named parameters (pipeline-relative paths) for training; see the module docstring."""
    if kind not in KINDS:
        raise ValueError(f"unknown tuning kind {kind!r}; choose one of {', '.join(KINDS)}")
    keys = sorted(params)
    if not keys:
        raise ValueError("trainable() needs at least one parameter to train")
    state = state_of(pipe)
    busy = sorted(set(keys) & state.tuning)
    if busy:
        raise EditError(f"{busy[0]} is already being fine-tuned by another trainable() block")
    modules = [m for m in pipe.components.values() if isinstance(m, nn.Module)]
    flags = {p: p.requires_grad for m in modules for p in m.parameters()}
    for p in flags:
        p.requires_grad_(False)
    state.tuning.update(keys)
    try:
        if kind == "dense":
            with _dense(pipe, keys) as tuning:
                yield tuning
        else:
            if rank < 1:
                raise ValueError(f"rank must be >= 1, got {rank}")
            with _low_rank(pipe, keys, rank, float(alpha if alpha is not None else rank)) as tuning:
                yield tuning
    finally:
        state.tuning.difference_update(keys)
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None


@contextlib.contextmanager
def _dense(pipe, keys: list[str]) -> Iterator[Tuning]:
    params = {k: get_parameter(pipe, k) for k in keys}
    originals = {k: p.detach().to("cpu", copy=True) for k, p in params.items()}  # on the CPU: no GPU memory
    for p in params.values():
        p.requires_grad_(True)
    tuning = Tuning(pipe, "dense", list(params.values()))
    tuning.originals = {id(params[k]): originals[k] for k in keys}
    ok = False
    try:
        yield tuning
        ok = True
    finally:
        changes = []
        with torch.no_grad():
            for key, param in params.items():
                original = originals.pop(key)
                if ok:
                    wide = torch.float64 if original.dtype == torch.float64 else torch.float32
                    delta = param.detach().to("cpu", wide) - original.to(wide)
                    if torch.any(delta):
                        changes.append(DenseDelta(key, delta))
                param.copy_(original)
                mark_written(pipe, key, param)
        tuning.changes = changes if ok else None
        tuning.originals = {}


def _owner(pipe, key: str) -> tuple[str, str, nn.Module]:
    """(component, module path inside it, module) of the Linear/Conv2d whose weight `key` is."""
    component, _, rest = key.partition(".")
    module_path, _, leaf = rest.rpartition(".")
    module = get_module(pipe, f"{component}.{module_path}") if module_path else None
    if leaf != "weight" or not isinstance(module, nn.Linear | nn.Conv2d):
        raise ValueError(f"low-rank tuning trains the weights of Linear and Conv2d modules; {key} is not one")
    return component, module_path, module


@contextlib.contextmanager
def _low_rank(pipe, keys: list[str], rank: int, alpha: float) -> Iterator[Tuning]:
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    owners = [_owner(pipe, k) for k in keys]
    by_component: dict[str, list[str]] = {}
    for component, path, _ in owners:
        by_component.setdefault(component, []).append(path)
    had_config = {c: hasattr(getattr(pipe, c), "peft_config") for c in by_component}
    for component, paths in by_component.items():
        pattern = "^(" + "|".join(re.escape(p) for p in paths) + ")$"
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=pattern)
        inject_adapter_in_model(config, getattr(pipe, component), adapter_name=ADAPTER)
    layers = {
        key: get_module(pipe, f"{component}.{path}") for key, (component, path, _) in zip(keys, owners, strict=True)
    }
    if not all(isinstance(layer, LoraLayer) for layer in layers.values()):
        _remove_adapters(pipe, keys, owners)
        raise RuntimeError("peft did not wrap every requested module with a LoRA adapter")
    lora_params = []
    for layer in layers.values():
        # float32 adapters on a half-precision model: Adam's moments underflow in fp16 (NaN) and small updates
        # round away in bf16; peft casts the layer's input to the adapter's dtype
        layer.lora_A[ADAPTER].float()
        layer.lora_B[ADAPTER].float()
        for p in (*layer.lora_A[ADAPTER].parameters(), *layer.lora_B[ADAPTER].parameters()):
            p.requires_grad_(True)
            lora_params.append(p)
    tuning = Tuning(pipe, "low_rank", lora_params)
    ok = False
    try:
        yield tuning
        ok = True
    finally:
        changes = []
        if ok:
            with torch.no_grad():
                for key, layer in layers.items():
                    scale = layer.scaling[ADAPTER]
                    b, a = layer.lora_B[ADAPTER].weight, layer.lora_A[ADAPTER].weight
                    up = (b.detach().reshape(b.shape[0], -1) * scale).to("cpu", torch.float32)
                    down = a.detach().reshape(a.shape[0], -1).to("cpu", torch.float32)
                    if torch.any(up) and torch.any(down):
                        shape = tuple(layer.get_base_layer().weight.shape)
                        changes.append(LowRankDelta.compact(key, up, down, shape))
        _remove_adapters(pipe, keys, owners)
        for component, had in had_config.items():
            if not had and hasattr(getattr(pipe, component), "peft_config"):
                delattr(getattr(pipe, component), "peft_config")  # what inject_adapter_in_model left behind
        tuning.changes = changes if ok else None


def _remove_adapters(pipe, keys: list[str], owners) -> None:
    """Put every original module back in place of its LoRA wrapper."""
    for _, (component, path, module) in zip(keys, owners, strict=True):
        parent_path, _, child = path.rpartition(".")
        parent = getattr(pipe, component).get_submodule(parent_path) if parent_path else getattr(pipe, component)
        setattr(parent, child, module)
