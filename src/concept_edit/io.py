"""Atomic file writes and pickle-free checkpoints.

Every file the project writes goes through `atomic_path`: the content is written to a temporary file
in the same folder and renamed into place, so a crash or a refused input never leaves a half-written
file behind. Training checkpoints (weights, optimizer moments, RNG state) are nested structures saved
as one safetensors file whose metadata holds the non-tensor skeleton as JSON — resumable without
pickle.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

_TENSOR = "__tensor__"
_INT_KEYS = "__int_keys__"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it becomes `path` only if the block succeeds.

    With `replace`, an existing `path` is swapped out and removed after the new folder is in place. The
    folder and what the block wrote get the usual permissions (the user's umask), not mkdtemp's 0700.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = None
    try:
        yield tmp
        _apply_umask(tmp)
        if path.exists():
            if not replace and (not path.is_dir() or any(path.iterdir())):
                raise FileExistsError(f"{path} already exists")
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


def _apply_umask(folder: Path) -> None:
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """safetensors save through `atomic_path` (tensors made contiguous and unshared first)."""
    clean = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(clean, str(tmp), metadata=metadata)
        except Exception as err:  # safetensors reports a full disk as SafetensorError "... (os error 28)"
            code = re.search(r"os error (\d+)", str(err))
            if code is None:
                raise
            raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from None


def save_tree(path: str | os.PathLike, tree: Any, metadata: dict[str, str] | None = None) -> None:
    """Save a nested dict/list of tensors and JSON values (e.g. an optimizer state_dict) without pickle."""
    tensors: dict[str, torch.Tensor] = {}

    def encode(node: Any) -> Any:
        if isinstance(node, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = node
            return {_TENSOR: key}
        if isinstance(node, dict):
            int_keys = [k for k in node if isinstance(k, int)]
            out = {str(k): encode(v) for k, v in node.items()}
            if int_keys:
                out[_INT_KEYS] = [str(k) for k in int_keys]
            return out
        if isinstance(node, list | tuple):
            return [encode(v) for v in node]
        return node

    skeleton = encode(tree)
    save_tensors(path, tensors, metadata={**(metadata or {}), "tree": json.dumps(skeleton)})


def load_tree(path: str | os.PathLike) -> Any:
    """Inverse of `save_tree`."""
    with safe_open(str(path), framework="pt") as f:
        skeleton = json.loads(f.metadata()["tree"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__

    def decode(node: Any) -> Any:
        if isinstance(node, dict):
            if _TENSOR in node:
                return tensors[node[_TENSOR]]
            int_keys = set(node.get(_INT_KEYS, []))
            return {(int(k) if k in int_keys else k): decode(v) for k, v in node.items() if k != _INT_KEYS}
        if isinstance(node, list):
            return [decode(v) for v in node]
        return node

    return decode(skeleton)


# -- one run per output ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def output_lock(*paths: str | os.PathLike | None) -> Iterator[None]:
    """Hold an exclusive lock on each output (a file or folder) for the block: `<path>.lock` beside it.

    A second run that would write one of the same paths is refused at once (ValueError naming the holder's
    pid) instead of silently replacing the first run's result. The lock file is created with any missing
    parent folders (so a folder that cannot be written is found before any work) and removed, with the
    folders it created, when the block ends. None entries are skipped.
    """
    with contextlib.ExitStack() as stack:
        seen = set()
        for path in paths:
            if path is None:
                continue
            if not str(path).strip():
                raise ValueError("an output path is empty; give a file or folder name")
            path = Path(os.path.realpath(path))  # `e/../e` and a symlinked folder are the same output
            if path not in seen:
                seen.add(path)
                stack.enter_context(_lock_one(path))
        yield


@contextlib.contextmanager
def _lock_one(path: Path) -> Iterator[None]:
    import fcntl

    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"cannot write {path}: {parent} is a file, not a folder")
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    lock = path.with_name(path.name + ".lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise ValueError(
                    f"{path} is being written by another run (pid {holder}); wait for it to finish"
                ) from None
            try:  # the holder may have removed the file between our open and our lock: lock the new one
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
    except OSError as err:
        _remove_empty(created)
        reason = "the disk is full" if err.errno == errno.ENOSPC else err.strerror or type(err).__name__
        raise ValueError(f"cannot write {path}: {reason} ({lock.parent})") from None
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)  # closing releases the lock, after the file is gone: no one can lock a stale file
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a lock created (deepest first) that the run left empty."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def kept_on_full_disk(target: Path, kept: Path | None, what: str) -> Iterator[None]:
    """A full disk while writing `target` becomes one line saying that `what` is kept at `kept` (a checkpoint
    the same command resumes with --resume); other errors, or nothing kept, pass through."""
    try:
        yield
    except OSError as err:
        if err.errno != errno.ENOSPC or kept is None or not Path(kept).exists():
            raise
        raise ValueError(
            f"the disk is full: could not write {target}; {what} is kept at {kept}: free space and run the same "
            "command with --resume"
        ) from None
