"""The `Edit`: a small, portable, reversible change to a pipeline's weights.

On disk an edit is one `.safetensors` file holding only the changed tensors' deltas, keyed by
pipeline-relative parameter path (`unet.<module path>.weight`), dense (`<key>.delta`) or low-rank
(`<key>.up` @ `<key>.down`) where the maths gives a low rank. Its metadata holds a JSON manifest: method,
config, request (concepts...), seed, base model spec, a hash of the base tensors the edit was computed
from, the tensors' own checksum and the library version.

* `apply(pipe, *edits)` applies edits in order, all or nothing; an edit whose base hash matches neither
  the pipeline's current tensors nor their unedited originals is refused (it was made for another model);
* `revert(pipe)` restores the exact original bytes (snapshots are kept, no subtraction);
* `applied(pipe, *edits)` is a context manager that always reverts;
* `compose(pipe, *edits)` merges edits into one file (deltas summed, low-rank factors concatenated).

The base hash is taken over the tensors rounded to float16, so an edit made on a float32 model applies
to the same model loaded in float16 (and vice versa); bfloat16 loads are refused as a different base.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from concept_edit.io import save_tensors
from concept_edit.models.loading import model_info
from concept_edit.models.targets import get_parameter

log = logging.getLogger(__name__)

FORMAT = "concept-edit/1"
EDIT_FILENAME = "edit.safetensors"
_META_KEY = "concept_edit"


class EditError(ValueError):
    """An edit that cannot be read, or that does not belong to the model it is applied to."""


@dataclass(frozen=True)
class WeightDelta:
    """The change to one parameter: `dense`, or the low-rank product `up @ down`."""

    dense: torch.Tensor | None = None
    up: torch.Tensor | None = None
    down: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.dense is None) == (self.up is None or self.down is None):
            raise ValueError("a WeightDelta is either dense or a pair of low-rank factors")

    @staticmethod
    def compact(up: torch.Tensor, down: torch.Tensor) -> WeightDelta:
        """Keep the factors when they are smaller than the dense matrix, else multiply them out."""
        rows, rank = up.shape
        cols = down.shape[1]
        if rank * (rows + cols) < rows * cols:
            return WeightDelta(up=up.float().contiguous(), down=down.float().contiguous())
        return WeightDelta(dense=(up.double() @ down.double()).float())

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.dense.shape) if self.dense is not None else (self.up.shape[0], self.down.shape[1])

    @property
    def rank(self) -> int | None:
        return None if self.dense is not None else int(self.up.shape[1])

    def materialize(self) -> torch.Tensor:
        return self.dense if self.dense is not None else self.up @ self.down

    def tensors(self, key: str) -> dict[str, torch.Tensor]:
        if self.dense is not None:
            return {f"{key}.delta": self.dense}
        return {f"{key}.up": self.up, f"{key}.down": self.down}


def _version() -> str:
    from concept_edit import __version__

    return __version__


def base_hash(pipe, keys: list[str] | Mapping[str, torch.Tensor]) -> str:
    """sha256 over (key, shape, float16 bytes) of the named parameters, in sorted key order."""
    values = keys if isinstance(keys, Mapping) else {k: get_parameter(pipe, k).detach() for k in keys}
    digest = hashlib.sha256()
    for key in sorted(values):
        tensor = values[key].detach().to("cpu", torch.float16).contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def _tensor_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}:{str(t.dtype)}:{tuple(t.shape)};".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Edit:
    """Weight deltas plus the manifest that says what they are and which base they belong to."""

    deltas: dict[str, WeightDelta]
    manifest: dict[str, Any] = field(default_factory=dict)
    source: str | None = field(default=None, compare=False)  # the file it was loaded from or saved to

    @classmethod
    def create(
        cls,
        pipe,
        deltas: dict[str, WeightDelta],
        *,
        method: str,
        config: dict,
        request: dict,
        seed: int | None,
        stats: dict | None = None,
    ) -> Edit:
        """Build an edit whose base is the pipeline's current state (call before changing the weights)."""
        if not deltas:
            raise EditError("an edit must change at least one tensor")
        for key, delta in deltas.items():
            param = get_parameter(pipe, key)
            if tuple(param.shape) != delta.shape:
                raise EditError(f"delta for {key} has shape {delta.shape}, the parameter {tuple(param.shape)}")
        manifest = {
            "format": FORMAT,
            "kind": "weights",
            "method": method,
            "config": config,
            "request": request,
            "concepts": list(request.get("concepts", [])),
            "seed": seed,
            "base_model": model_info(pipe).spec,
            "base_hash": base_hash(pipe, list(deltas)),
            "library_version": _version(),
            "params": {k: {"shape": list(d.shape), "rank": d.rank} for k, d in sorted(deltas.items())},
            "stats": stats or {},
        }
        return cls(deltas=dict(sorted(deltas.items())), manifest=manifest)

    @property
    def name(self) -> str:
        concepts = ", ".join(self.manifest.get("concepts", [])) or "?"
        return f"{self.manifest.get('method', '?')}({concepts})"

    def tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for key, delta in self.deltas.items():
            out.update(delta.tensors(key))
        return out

    def save(self, path: str | Path) -> Path:
        """Write atomically to `path` (a .safetensors file, or a folder that gets edit.safetensors)."""
        target = resolve_edit_path(path, for_writing=True)
        tensors = self.tensors()
        manifest = {**self.manifest, "tensors_sha256": _tensor_checksum(tensors)}
        save_tensors(target, tensors, metadata={_META_KEY: json.dumps(manifest, sort_keys=True)})
        self.source = str(target)
        return target

    @classmethod
    def load(cls, path: str | Path) -> Edit:
        """Read and validate an edit file (or folder holding edit.safetensors); EditError if it is not one."""
        source = resolve_edit_path(path)
        try:
            with safe_open(str(source), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        except (SafetensorError, OSError, ValueError) as err:
            raise EditError(f"{source} is not a readable edit file (truncated or not safetensors): {err}") from None
        if _META_KEY not in meta:
            raise EditError(f"{source} is a safetensors file but not a concept-edit edit (it has no manifest)")
        try:
            manifest = json.loads(meta[_META_KEY])
        except json.JSONDecodeError:
            raise EditError(f"{source}: the edit manifest is not valid JSON") from None
        if manifest.get("format") != FORMAT:
            raise EditError(f"{source}: unsupported edit format {manifest.get('format')!r} (expected {FORMAT})")
        if manifest.get("tensors_sha256") != _tensor_checksum(tensors):
            raise EditError(f"{source}: tensor checksum mismatch, the file is corrupted")
        deltas = {}
        for key, info in manifest["params"].items():
            if info["rank"] is None:
                delta = WeightDelta(dense=tensors.pop(f"{key}.delta", None))
            else:
                delta = WeightDelta(up=tensors.pop(f"{key}.up", None), down=tensors.pop(f"{key}.down", None))
            if list(delta.shape) != info["shape"]:
                raise EditError(f"{source}: tensor {key} has shape {delta.shape}, manifest says {info['shape']}")
            deltas[key] = delta
        if tensors:
            raise EditError(f"{source}: tensors not listed in the manifest: {sorted(tensors)[:3]}")
        manifest.pop("tensors_sha256")
        return cls(deltas=deltas, manifest=manifest, source=str(source))


def resolve_edit_path(path: str | Path, for_writing: bool = False) -> Path:
    """A path to an edit: `x.safetensors` is the file itself; anything else is a folder with edit.safetensors."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if for_writing and path.is_dir():
            raise EditError(f"{path} is a folder; give a file name or a folder without the .safetensors suffix")
        target = path
    else:
        if path.exists() and not path.is_dir():
            raise EditError(f"{path} is a file, not a folder; give a folder or a .safetensors file name")
        target = path / EDIT_FILENAME
    if not for_writing and not target.exists():
        raise EditError(f"no edit at {path} (looked for {target})")
    return target


# -- applying ------------------------------------------------------------------------------------------------
def _stack(pipe) -> list[tuple[str, dict[str, torch.Tensor]]]:
    if not hasattr(pipe, "concept_edit_stack"):
        pipe.concept_edit_stack = []
    return pipe.concept_edit_stack


def applied_edits(pipe) -> list[str]:
    """Names of the edits currently applied to `pipe`, oldest first."""
    return [name for name, _ in _stack(pipe)]


def _pristine(pipe, key: str) -> torch.Tensor:
    for _, snapshot in _stack(pipe):
        if key in snapshot:
            return snapshot[key]
    return get_parameter(pipe, key).detach()


def _apply_one(pipe, edit: Edit) -> None:
    params = {}
    for key, delta in edit.deltas.items():
        try:
            params[key] = get_parameter(pipe, key)
        except (KeyError, AttributeError):
            raise EditError(
                f"edit {edit.name} changes {key}, which this model does not have; it was made for "
                f"{edit.manifest.get('base_model')!r}"
            ) from None
        if tuple(params[key].shape) != delta.shape:
            raise EditError(
                f"edit {edit.name} was made for {edit.manifest.get('base_model')!r}: {key} has shape "
                f"{tuple(params[key].shape)} here, {delta.shape} in the edit"
            )
    current = base_hash(pipe, {k: p.detach() for k, p in params.items()})
    original = base_hash(pipe, {k: _pristine(pipe, k) for k in params})
    if edit.manifest.get("base_hash") not in (current, original):
        raise EditError(
            f"edit {edit.name} was made for a different base model "
            f"({edit.manifest.get('base_model')!r}); its weights do not match this model's "
            f"({model_info(pipe).spec!r}). Refusing to apply it."
        )
    with torch.no_grad():
        updated = {
            k: (p.detach().float() + edit.deltas[k].materialize().to(p.device, torch.float32)).to(p.dtype)
            for k, p in params.items()
        }
        snapshot = {k: p.detach().clone() for k, p in params.items()}
        for k, p in params.items():
            p.copy_(updated[k])
    _stack(pipe).append((edit.name, snapshot))


def apply(pipe, *edits: Edit) -> None:
    """Apply `edits` in order. All or nothing: on any refusal the pipeline is left as it was."""
    done = 0
    try:
        for edit in edits:
            _apply_one(pipe, edit)
            done += 1
    except Exception:
        revert(pipe, done)
        raise
    for edit in edits:  # name the files a user asked for; in-memory edits (debias steps) stay quiet
        log.log(logging.INFO if edit.source else logging.DEBUG, "applied %s", edit.name)


def revert(pipe, count: int | None = None) -> None:
    """Undo the last `count` applied edits (all by default), restoring the exact original tensors."""
    stack = _stack(pipe)
    count = len(stack) if count is None else count
    with torch.no_grad():
        for _ in range(min(count, len(stack))):
            _, snapshot = stack.pop()
            for key, value in snapshot.items():
                get_parameter(pipe, key).copy_(value)


@contextlib.contextmanager
def applied(pipe, *edits: Edit) -> Iterator[None]:
    """`with applied(pipe, edit): ...` — the edits hold inside the block and are always reverted after."""
    apply(pipe, *edits)
    try:
        yield
    finally:
        revert(pipe, len(edits))


def compose(pipe, *edits: Edit) -> Edit:
    """Merge edits (each made for `pipe`'s base or for the result of the ones before it) into one edit."""
    if not edits:
        raise EditError("compose needs at least one edit")
    with applied(pipe, *edits):  # validates each edit against the running state; restores pipe after
        pass
    merged: dict[str, list[WeightDelta]] = {}
    for edit in edits:
        for key, delta in edit.deltas.items():
            merged.setdefault(key, []).append(delta)
    deltas = {}
    for key, parts in merged.items():
        if all(p.rank is not None for p in parts):
            deltas[key] = WeightDelta.compact(torch.cat([p.up for p in parts], 1), torch.cat([p.down for p in parts]))
        else:
            deltas[key] = WeightDelta(dense=sum(p.materialize() for p in parts))
    components = [{k: e.manifest.get(k) for k in ("method", "concepts", "config", "request", "seed")} for e in edits]
    concepts = [c for e in edits for c in e.manifest.get("concepts", [])]
    return Edit.create(
        pipe, deltas, method="compose", config={"components": components}, request={"concepts": concepts}, seed=None
    )
