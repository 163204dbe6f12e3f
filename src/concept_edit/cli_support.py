"""Helpers every CLI verb shares: the model options, loading the model and the edits, checking an output.

Kept apart from `cli.py` so that the verb modules (`cli.py`, `evaluation/cli.py`) import it and never each
other.
"""

from __future__ import annotations

import argparse
from pathlib import Path


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


def load_model(args: argparse.Namespace):
    import torch

    from concept_edit.models import load_pipeline

    dtype = getattr(torch, args.dtype) if args.dtype else None
    return load_pipeline(args.model, device=args.device, dtype=dtype, allow_pickle=args.allow_pickle)


def load_edits(paths: list[str] | None):
    from concept_edit.edit import Edit

    return [Edit.load(p) for p in paths or []]


def check_out_file(out: str, suffix: str) -> Path:
    """`--out` as a file with this suffix whose parent folders are (or can be) folders."""
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; give a {suffix} file name")
    if path.suffix.lower() != suffix:
        raise ValueError(f"--out must be a {suffix} file, got {path}")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"cannot write {path}: {parent} is a file")
    return path
