"""The `Edit`: an ordered list of changes plus the manifest that says what they are and which base they fit.

On disk an edit is one `.safetensors` file. Its metadata holds a JSON manifest: method, config, request,
seed, base model spec, the base hash, the library version, and one entry per change (kind, target, shape,
dtype, and the name and sha256 of each of its tensors). Loading reads the header only; each change's
tensors are read, and checked against their sha256, when it is applied, so a whole-UNet edit is never held
in memory twice.

The base hash covers every tensor an edit touches: the parameters it changes, and for an activation change
the parameters of the module it hooks (of its parent when it has none). It is taken over float16-rounded
values, so an edit made on a float32 model applies to the same model loaded in float16; a bfloat16 load
rounds differently and is a different base.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from concept_edit.edit.changes import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    WEIGHT_KINDS,
    Change,
    EditError,
    change_from_parts,
    check_info,
)
from concept_edit.edit.manifest import EDIT_FILENAME, FORMAT, META_KEY, check_manifest
from concept_edit.edit.state import check_base_unchanged, combine, current_digest, sha256
from concept_edit.io import save_tensors
from concept_edit.models.loading import model_info
from concept_edit.models.targets import get_parameter

log = logging.getLogger(__name__)

SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I32": "int32",
    "I64": "int64",
}


# -- where an edit's tensors come from -------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredChange:
    """A change of a loaded edit whose tensors stay in the file until it is applied."""

    info: dict
    path: Path

    @property
    def kind(self) -> str:
        return self.info["kind"]

    @property
    def target(self) -> str:
        return self.info["target"]

    def load(self, handle=None) -> Change:
        """Read this change's tensors (through `handle`, an open safe_open of the file, when given)."""
        try:
            with contextlib.ExitStack() as stack:
                f = handle or stack.enter_context(safe_open(str(self.path), framework="pt"))
                parts = {part: f.get_tensor(entry["name"]) for part, entry in self.info["tensors"].items()}
        except (SafetensorError, OSError) as err:
            raise EditError(f"{self.path}: cannot read the tensors of {self.target}: {err}") from None
        for part, tensor in parts.items():
            if sha256(tensor) != self.info["tensors"][part]["sha256"]:
                raise EditError(
                    f"{self.path}: tensor {part!r} of {self.target} fails its checksum; the file is corrupted"
                )
        try:
            return change_from_parts(self.info, parts)
        except EditError as err:  # with several --edit, say which file holds the bad values
            raise EditError(f"{self.path}: {err}") from None


# -- the edit ---------------------------------------------------------------------------------------------------
@dataclass
class Edit:
    """Changes (applied in order) plus the manifest; build one with `Edit.create`, read one with `Edit.load`."""

    entries: list[Change | StoredChange]
    manifest: dict[str, Any] = field(default_factory=dict)
    source: str | None = field(default=None, compare=False)  # the file it was loaded from or saved to
    token: str = field(default_factory=lambda: uuid.uuid4().hex, compare=False, repr=False)  # in-memory identity

    @classmethod
    def create(
        cls,
        pipe,
        changes: Iterable[Change],
        *,
        method: str,
        config: dict,
        request: dict,
        seed: int | None,
        stats: dict | None = None,
        dtype: torch.dtype | None = None,
        keep_dtype: bool = False,
    ) -> Edit:
        """An edit whose base is the pipeline's current state, which must not be mid-training.

        dtype: how dense deltas, sparse values and activation directions are stored; default the changed
        parameter's own dtype (float16 for a float16 model), and float32 for low-rank factors, which are small.
        """
        changes = list(changes)
        if not changes:
            raise EditError("an edit must change at least one tensor or activation")
        for change in changes:
            _check_target(pipe, change, f"cannot create the {method} edit")
        if not keep_dtype:
            changes = [_stored_as(pipe, c, dtype) for c in changes]
        for change in changes:
            change_from_parts(change.info(), change.parts())  # the same checks a file gets
        keys = base_keys(pipe, changes)
        check_base_unchanged(pipe, keys)
        manifest = {
            "format": FORMAT,
            "method": method,
            "config": config,
            "request": request,
            "concepts": list(request.get("concepts", [])),
            "seed": seed,
            "base_model": model_info(pipe).spec,
            "base_hash": combine({k: current_digest(pipe, k, get_parameter(pipe, k)) for k in keys}),
            "library_version": _version(),
            "kinds": sorted({c.kind for c in changes}),
            "stats": stats or {},
        }
        return cls(entries=list(changes), manifest=manifest)

    @property
    def name(self) -> str:
        concepts = ", ".join(self.manifest.get("concepts", [])) or "?"
        return f"{self.manifest.get('method', '?')}({concepts})"

    @property
    def identity(self) -> str:
        """What makes two edits the same edit: the checksums of a loaded file's tensors, else the object."""
        if all(isinstance(e, StoredChange) for e in self.entries):
            listing = [
                (e.info["kind"], e.info["target"], sorted(t["sha256"] for t in e.info["tensors"].values()))
                for e in self.entries
            ]
            return hashlib.sha256(json.dumps([self.manifest.get("base_hash"), listing]).encode()).hexdigest()
        return f"object:{self.token}"

    @property
    def kinds(self) -> list[str]:
        return [e.kind for e in self.entries]

    @property
    def targets(self) -> list[str]:
        return [e.target for e in self.entries]

    def changes(self) -> Iterator[Change]:
        """Every change, its tensors read from the file one change at a time.

        The file is opened afresh for each change: safe_open maps it into memory, and an open handle would keep
        every page read so far resident (a whole-UNet edit then costs 2x the model instead of 1x).
        """
        for entry in self.entries:
            yield entry.load() if isinstance(entry, StoredChange) else entry

    def weight_delta(self, key: str) -> torch.Tensor:
        """The summed dense/low-rank delta this edit adds to parameter `key` (for inspection and tests)."""
        parts = [c.materialize().float() for c in self.changes() if c.target == key and c.kind in ("dense", "low_rank")]
        if not parts:
            raise KeyError(key)
        return sum(parts[1:], parts[0])

    def astype(self, dtype: torch.dtype) -> Edit:
        """The same edit with its weight changes stored in `dtype` (activation directions stay as they are)."""
        changes = [c if c.kind == "activation" else c.stored_as(dtype) for c in self.changes()]
        for change in changes:
            change_from_parts(change.info(), change.parts())  # a narrower dtype may overflow to inf
        return Edit(entries=changes, manifest={**self.manifest, "kinds": sorted({c.kind for c in changes})})

    def save(self, path: str | Path) -> Path:
        """Write atomically to `path` (a .safetensors file, or a folder that gets edit.safetensors)."""
        target = resolve_edit_path(path, for_writing=True)
        tensors, infos, seen = {}, [], {}
        for change in self.changes():
            n = seen[change.target] = seen.get(change.target, -1) + 1
            prefix = change.target if n == 0 else f"{change.target}@{n}"
            info = change.info()
            info["tensors"] = {}
            for part, tensor in change.parts().items():
                tensors[f"{prefix}.{part}"] = tensor
                info["tensors"][part] = {"name": f"{prefix}.{part}", "sha256": sha256(tensor)}
            infos.append(info)
        manifest = {**self.manifest, "changes": infos}
        save_tensors(target, tensors, metadata={META_KEY: json.dumps(manifest, sort_keys=True)})
        self.source = str(target)
        return target

    @classmethod
    def load(cls, path: str | Path) -> Edit:
        """Read and validate an edit's manifest and tensor headers (not their data); EditError if unusable."""
        source = resolve_edit_path(path)
        try:
            with safe_open(str(source), framework="pt") as f:
                meta = f.metadata() or {}
                header = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as err:
            raise EditError(f"{source} is not a readable edit file (truncated or not safetensors): {err}") from None
        if META_KEY not in meta:
            raise EditError(f"{source} is a safetensors file but not a concept-edit edit (it has no manifest)")
        try:
            manifest = json.loads(meta[META_KEY])
        except json.JSONDecodeError:
            raise EditError(f"{source}: the edit manifest is not valid JSON") from None
        _check_manifest(source, manifest)
        entries = []
        for info in manifest.pop("changes"):
            try:
                _check_stored_info(info, header)
            except EditError as err:
                raise EditError(f"{source}: {err}") from None
            entries.append(StoredChange(info, source))
        unlisted = set(header) - {e["name"] for s in entries for e in s.info["tensors"].values()}
        if unlisted:
            raise EditError(f"{source}: tensors not listed in the manifest: {sorted(unlisted)[:3]}")
        return cls(entries=entries, manifest=manifest, source=str(source))


def _check_manifest(source: Path, manifest: Any) -> None:
    check_manifest(manifest, EditError, f"{source}: ")


def _check_stored_info(info: Any, header: dict) -> None:
    cls = check_info(info)
    tensors = info.get("tensors")
    expected = cls.expected_parts(info)
    if not isinstance(tensors, dict) or set(tensors) != set(expected):
        raise EditError(f"change for {info['target']}: expected tensors {sorted(expected)}, found {tensors!r}")
    for part, shape in expected.items():
        entry = tensors[part]
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("name"), str)
            or not isinstance(entry.get("sha256"), str)
        ):
            raise EditError(f"change for {info['target']}: tensor entry {part!r} needs a name and a sha256")
        if entry["name"] not in header:
            raise EditError(f"change for {info['target']}: tensor {entry['name']!r} is not in the file")
        stored_shape, stored_dtype = header[entry["name"]]
        wanted = INDEX_DTYPES if part == "indices" else FLOAT_DTYPES
        stored = SAFETENSORS_DTYPES.get(stored_dtype)
        if part != "indices" and stored != info["dtype"]:
            raise EditError(
                f"change for {info['target']}: the manifest says {info['dtype']}, tensor {part!r} is {stored}"
            )
        if stored_shape != shape or stored not in wanted:
            raise EditError(
                f"change for {info['target']}: tensor {part!r} is {stored_dtype} {stored_shape}, "
                f"expected shape {shape} and dtype {'/'.join(wanted)}"
            )


# -- targets -------------------------------------------------------------------------------------------------
def get_module(pipe, path: str) -> nn.Module:
    """Resolve a pipeline-relative module path such as `unet.mid_block.attentions.0`."""
    component, _, rest = path.partition(".")
    module = getattr(pipe, component, None)
    if not isinstance(module, nn.Module):
        raise KeyError(path)
    return module.get_submodule(rest) if rest else module


def _check_target(pipe, change: Change | StoredChange, who: str) -> None:
    """EditError unless the pipeline has the change's target, with the shape the change expects."""
    info = change.info if isinstance(change, StoredChange) else change.info()
    try:
        if info["kind"] == "activation":
            get_module(pipe, info["target"])
            return
        param = get_parameter(pipe, info["target"])
    except (KeyError, AttributeError):
        what = "module" if info["kind"] == "activation" else "parameter"
        raise EditError(f"{who}: this model has no {what} {info['target']}") from None
    if tuple(param.shape) != tuple(info["shape"]):
        raise EditError(
            f"{who}: {info['target']} has shape {tuple(param.shape)} in this model, {tuple(info['shape'])} in the edit"
        )


def base_keys(pipe, changes: Iterable[Change | StoredChange]) -> list[str]:
    """The parameters an edit's base hash covers (see the module docstring)."""
    keys: dict[str, None] = {}
    for change in changes:
        if change.kind in WEIGHT_KINDS:
            keys[change.target] = None
            continue
        path = change.target
        while True:
            module = get_module(pipe, path)
            names = [n for n, _ in module.named_parameters()]
            if names or "." not in path:
                keys.update({f"{path}.{n}": None for n in names})
                break
            path = path.rpartition(".")[0]
    return sorted(keys)


def _stored_as(pipe, change: Change, dtype: torch.dtype | None) -> Change:
    if dtype is None:
        if change.kind == "low_rank":
            dtype = torch.float64 if change.up.dtype == torch.float64 else torch.float32
        elif change.kind == "activation":
            dtype = torch.float32
        else:
            dtype = get_parameter(pipe, change.target).dtype
    return change.stored_as(dtype)


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


def _version() -> str:
    from concept_edit._version import __version__

    return __version__
