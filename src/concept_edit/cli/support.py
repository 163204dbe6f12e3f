"""Helpers the CLI verbs share: the model options, loading the model and the edits, checking an output, the
stored dtype of an edit.

Kept apart so that the verb modules (`edit`, `tools`, `evaluation`, `attacks`, `cad`) import it and never each
other.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
from pathlib import Path

from concept_edit.edit.manifest import EDIT_FILENAME, META_KEY, check_change_kind, check_manifest


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="'shapes', a local diffusers folder, or a hub id")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument(
        "--dtype",
        choices=("float32", "float16", "bfloat16"),
        default=None,
        help="weights dtype (default: float16 on CUDA, float32 on CPU)",
    )
    p.add_argument(
        "--allow-pickle", action="store_true", help="allow pickled (.bin/.ckpt) weights; only for sources you trust"
    )


def load_model(args: argparse.Namespace, *, text_to_image: bool = True):
    """The --model; a digits model (not text-to-image) only where the verb says it takes one."""
    import torch

    from concept_edit.models import load_pipeline
    from concept_edit.worlds import world_of

    dtype = getattr(torch, args.dtype) if args.dtype else None
    pipe = load_pipeline(args.model, device=args.device, dtype=dtype, allow_pickle=args.allow_pickle)
    if text_to_image and not world_of(pipe).text_to_image:
        raise ValueError(
            f"{args.model} is a class-conditional digits model, not a text-to-image pipeline: it takes "
            "`edit amnesia` and `compose`; see benchmarks/amnesia_quality.py for sampling and evaluating it"
        )
    return pipe


def load_edits(paths: list[str] | None):
    from concept_edit.edit import Edit

    return [Edit.load(p) for p in paths or []]


def add_edit_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--edit", action="append", required=required, help="edit file or folder to apply (repeat)")
    p.add_argument("--allow-repeat", action="store_true", help="allow the same edit twice (it is applied twice)")


def add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=number("--steps", low=1, integer=True), help="inference steps (model default)")
    p.add_argument("--guidance", type=number("--guidance", low=0), help="guidance scale (model default)")


def number(name: str, **rule):
    """An argparse `type` that parses a number and checks it (finite, in range) with `check_number`."""
    from concept_edit.validation import check_number

    def parse(text: str):
        try:
            value = int(text) if rule.get("integer") else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be {'an integer' if rule.get('integer') else 'a number'}, got {text!r}"
            ) from None
        try:
            return check_number(name, value, **rule)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def seed_type():
    from concept_edit.validation import MAX_SEED

    return number("--seed", low=0, high=MAX_SEED, integer=True)


def add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def check_output(out: str | Path, *, force: bool, inputs=(), folder: bool = False, suffix: str | None = None) -> Path:
    """Refuse, before any work, an output that exists (unless `force`), is one of the inputs, or cannot be written."""
    path = Path(out)
    if suffix is not None and path.suffix.lower() != suffix:
        raise ValueError(f"--out must be a {suffix} file, got {path}")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"cannot write {path}: {parent} is a file, not a folder")
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} is a file; give a folder")
    if not folder and path.is_dir():
        raise ValueError(f"--out {path} is a folder; give a file name")
    for item in inputs:
        if Path(item).resolve() == path.resolve():
            raise ValueError(f"--out {path} is also an input; write the result to a new path")
    occupied = path.exists() and (not folder or any(path.iterdir()))
    if occupied and not force:
        raise ValueError(f"{path} already exists; pass --force to overwrite it")
    nearest = next(p for p in path.parents if p.exists())  # where the output (or its first new folder) goes
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path}: the folder {nearest} is not writable")
    return path


def edit_inputs(paths) -> list[Path]:
    """The files behind --edit arguments (for the 'is not an input' check)."""
    from concept_edit.edit import EditError, resolve_edit_path

    files = []
    for p in paths or []:
        try:
            files.append(resolve_edit_path(p))
        except EditError:
            continue  # reported when the edit is loaded
    return files


def read_manifest(path: str | Path) -> dict:
    """An edit file's manifest, read from its safetensors header alone (no torch): for `inspect`.

    `path` is found as `concept_edit.edit.resolve_edit_path` finds it, and the manifest is checked as
    `Edit.load` checks it, without the tensors' dtypes and sizes (checked when the edit is applied). ValueError,
    one line naming the file, for a file that is not an edit.
    """
    path = Path(path)
    source = path if path.suffix == ".safetensors" else path / EDIT_FILENAME
    if path.suffix != ".safetensors" and path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file, not a folder; give a folder or a .safetensors file name")
    if not source.is_file():
        raise ValueError(f"no edit at {path} (looked for {source})")
    try:
        with open(source, "rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            if size > os.path.getsize(source) - 8:
                raise ValueError("the header is longer than the file")
            header = json.loads(f.read(size))
        meta = header.get("__metadata__") or {}
    except (struct.error, ValueError, AttributeError, OSError) as err:
        raise ValueError(f"{source} is not a readable edit file (truncated or not safetensors): {err}") from None
    if not isinstance(meta, dict) or META_KEY not in meta:
        raise ValueError(f"{source} is a safetensors file but not a concept-edit edit (it has no manifest)")
    try:
        manifest = json.loads(meta[META_KEY])
    except (TypeError, json.JSONDecodeError):
        raise ValueError(f"{source}: the edit manifest is not valid JSON") from None
    try:
        _check_manifest(manifest, set(header) - {"__metadata__"})
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    return manifest


def _check_manifest(manifest, tensors: set[str]) -> None:
    """The checks `Edit.load` makes of the manifest, and the fields of each change entry (not the tensors)."""
    check_manifest(manifest)
    for info in manifest["changes"]:
        kind, target = check_change_kind(info), info.get("target")
        shape = info.get("shape")
        if kind != "activation" and (
            not isinstance(shape, list) or not shape or not all(isinstance(n, int) and n > 0 for n in shape)
        ):
            raise ValueError(f"change for {target}: 'shape' must be a list of positive integers, got {shape!r}")
        parts = info.get("tensors")
        names = [e.get("name") for e in parts.values() if isinstance(e, dict)] if isinstance(parts, dict) else []
        if not names or any(n not in tensors for n in names):
            raise ValueError(f"change for {target}: its tensors are not all in the file")


def add_store_dtype(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store-dtype",
        choices=("float32", "float16", "bfloat16"),
        default=None,
        help="dtype of the stored weight changes (default: dense and sparse in the model's dtype, low-rank float32)",
    )


def stored_as(edit, dtype: str | None):
    """The edit with its weight changes in `dtype` (--store-dtype), or as it is when none is given."""
    if not dtype:
        return edit
    import torch

    return edit.astype(getattr(torch, dtype))
