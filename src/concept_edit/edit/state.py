"""What the library remembers about a pipeline it edits: applied edits, tensor digests, tuned tensors.

* the **stack** of applied edits, each with the undo steps that take it back and the digest each changed
  tensor had before it (the oldest such digest of a tensor is its unedited state);
* a **digest cache**: sha256 of a tensor's float16-rounded values, computed once and reused until the tensor
  changes (torch bumps a tensor's version counter on every in-place write; a new storage has a new pointer);
* the tensors under an open `trainable` block, which no edit may be created from or applied to;
* while a method's `fit` runs, the version of every parameter when it started, so that a method which
  changed weights without restoring them is caught (`check_unchanged`).

Everything lives in one attribute of the pipeline object, so two pipelines never share state.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from concept_edit.edit.changes import EditError, Undo


@dataclass
class AppliedEdit:
    name: str
    undo: list[Undo]  # in the order the changes were applied
    digests_before: dict[str, str]  # tensor key -> digest before this edit (its base tensors)
    targets: set[str] = field(default_factory=set)  # the parameters it writes
    identity: str = ""  # Edit.identity: the same edit applied twice is refused unless asked for


@dataclass
class PipelineState:
    stack: list[AppliedEdit] = field(default_factory=list)
    digests: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # key -> (version, data_ptr, digest)
    tuning: set[str] = field(default_factory=set)
    written: dict[str, int] = field(default_factory=dict)  # key -> version after the library's last write to it
    fit_versions: list[dict[str, tuple[int, int]]] = field(default_factory=list)  # one per running fit


def state_of(pipe: Any) -> PipelineState:
    state = getattr(pipe, "concept_edit_state", None)
    if state is None:
        state = PipelineState()
        pipe.concept_edit_state = state
    return state


def tensor_bytes(tensor: torch.Tensor):
    """The raw bytes of a tensor as a buffer (any dtype, bfloat16 included), without a copy when contiguous."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor_bytes(tensor)).hexdigest()


def value_digest(key: str, tensor: torch.Tensor) -> str:
    """sha256 over the key, the shape and the float16-rounded values: the same for fp32 and fp16 loads."""
    digest = hashlib.sha256(f"{key}:{tuple(tensor.shape)};".encode())
    digest.update(tensor_bytes(tensor.detach().to("cpu", torch.float16)))
    return digest.hexdigest()


def current_digest(pipe: Any, key: str, tensor: torch.Tensor) -> str:
    """The digest of a tensor's current values, cached until the tensor is written to."""
    cache = state_of(pipe).digests
    stamp = (tensor._version, tensor.data_ptr())
    hit = cache.get(key)
    if hit is not None and hit[:2] == stamp:
        return hit[2]
    digest = value_digest(key, tensor)
    cache[key] = (*stamp, digest)
    return digest


def remember_digest(pipe: Any, key: str, tensor: torch.Tensor, digest: str) -> None:
    """Record a digest the library knows without hashing (after restoring a tensor from its copy)."""
    state_of(pipe).digests[key] = (tensor._version, tensor.data_ptr(), digest)


def pristine_digest(pipe: Any, key: str, tensor: torch.Tensor) -> str:
    """The digest a tensor had before any applied edit changed it."""
    for applied in state_of(pipe).stack:
        if key in applied.digests_before:
            return applied.digests_before[key]
    return current_digest(pipe, key, tensor)


def combine(digests: dict[str, str]) -> str:
    """One base hash from per-tensor digests, in sorted key order."""
    return hashlib.sha256("".join(f"{k}:{digests[k]}\n" for k in sorted(digests)).encode()).hexdigest()


# -- weights changed behind the library's back ------------------------------------------------------------------
def named_tensors(pipe: Any) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of every module component, by pipeline-relative path."""
    out = {}
    for component, module in getattr(pipe, "components", {}).items():
        if isinstance(module, nn.Module):
            for name, tensor in module.named_parameters():
                out[f"{component}.{name}"] = tensor
    return out


def versions(pipe: Any) -> dict[str, tuple[int, int]]:
    return {k: (t._version, t.data_ptr()) for k, t in named_tensors(pipe).items()}


def mark_written(pipe: Any, key: str, tensor: torch.Tensor) -> None:
    """The library wrote this tensor (apply, revert, the end of `trainable`): not a change behind its back."""
    state_of(pipe).written[key] = tensor._version


def changed_since(pipe: Any, before: dict[str, tuple[int, int]]) -> list[str]:
    """Keys written since `before` by someone other than the library (whose last write it records)."""
    state = state_of(pipe)
    changed = []
    for key, tensor in named_tensors(pipe).items():
        now = (tensor._version, tensor.data_ptr())
        if before.get(key, now) != now and state.written.get(key) != tensor._version:
            changed.append(key)
    return changed


def check_base_unchanged(pipe: Any, keys: list[str]) -> None:
    """Refuse to create an edit from tensors under training, or changed by the running method and not restored."""
    state = state_of(pipe)
    tuned = sorted(set(keys) & state.tuning)
    if tuned:
        raise EditError(
            f"{tuned[0]} (and {len(tuned) - 1} more) is being fine-tuned: take the edit from the trainable() "
            "helper after its block, which computes it against the original weights"
        )
    if state.fit_versions:
        changed = sorted(set(changed_since(pipe, state.fit_versions[-1])) & set(keys))
        if changed:
            raise EditError(
                f"{changed[0]} changed since the method started and was not restored: an edit must be computed "
                "against the unedited weights (train inside concept_edit.trainable, which restores them)"
            )
