"""A resumable step loop shared by every long job (oracle, VAE and UNet training; later fine-tuning methods).

* progress: a tqdm bar with the step's metrics;
* interruption: Ctrl-C (SIGINT) is deferred to the end of the current step, a checkpoint is written, and
  the job exits telling how to resume; a second Ctrl-C (or SIGTERM) stops at once, saying which earlier
  checkpoint is kept;
* divergence: a non-finite metric (the loss) stops the job at that step, and no checkpoint of it is kept
  (a checkpoint never holds non-finite values);
* reproducibility: callers derive each step's randomness from (seed, step) with `step_rng`, so a resumed
  run draws exactly the batches an uninterrupted one would have drawn.

A checkpoint carries its own marker (`CHECKPOINT_FORMAT` and the kind of job that wrote it) in its metadata:
a file without this job's marker is never read, overwritten or removed as one of its checkpoints.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from concept_edit.io import load_tree, save_tree
from concept_edit.stopping import Interrupted, Terminated

__all__ = [
    "CHECKPOINT_FORMAT",
    "Diverged",
    "Interrupted",
    "check_checkpoint",
    "check_checkpoint_slot",
    "describe_file",
    "load_checkpoint",
    "paths_overlap",
    "resume",
    "run_steps",
    "save_checkpoint",
    "step_generator",
    "step_rng",
]

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "concept-edit-checkpoint/1"
_MARKER = "checkpoint"


class Diverged(ValueError):
    """Training produced a non-finite loss (or state): stopped at that step, no checkpoint of it kept."""


def step_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    """An independent numpy generator for one step of one random stream."""
    return np.random.default_rng([seed, step, stream])


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A torch CPU generator seeded from (seed, step, stream)."""
    return torch.Generator().manual_seed(int(step_rng(seed, step, stream).integers(2**62)))


def run_steps(
    *,
    total: int,
    start: int,
    step_fn: Callable[[int], dict[str, float]],
    save_fn: Callable[[int], None],
    every: int,
    desc: str,
    progress: bool = True,
    checkpointing: bool = True,
    checkpoint_file: str | Path | None = None,
    diverged_hint: str = "",
) -> None:
    """Run steps [start, total); checkpoint every `every` steps, at the end, and on Ctrl-C.

    Without `checkpointing` (nowhere to save), Ctrl-C is left alone and interrupts at once. `checkpoint_file`
    (where `save_fn` writes) lets the messages say what is kept: on a full disk, on SIGTERM or a second
    Ctrl-C (the last checkpoint), and on divergence (the checkpoint this run wrote is removed: resuming it
    would diverge again). A non-finite metric, or `Diverged` from `step_fn`, stops the run with one line
    ending in `diverged_hint`.
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"checkpoint_every must be an integer >= 1, got {every!r}")
    stop = {"requested": False}
    previous = signal.getsignal(signal.SIGINT)
    path = Path(checkpoint_file) if checkpoint_file is not None else None
    saved = {"last": start if start > 0 and path is not None and path.exists() else None, "ours": False}
    new_folder = path is not None and not path.parent.exists()  # removed with a diverged run's checkpoint

    def request_stop(signum, frame):  # noqa: ARG001 - signal handler signature
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        log.warning("interrupt received: finishing this step and writing a checkpoint (Ctrl-C again to abort)")

    def kept() -> str:
        if saved["last"] is None or path is None:
            return "no checkpoint was written yet"
        return (
            f"the checkpoint of step {saved['last']} is kept at {path}: run the same command with --resume to continue"
        )

    def save(step: int) -> None:
        try:
            save_fn(step)
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            raise ValueError(
                f"{desc}: the disk is full: could not write the checkpoint of step {step}; {kept()}"
            ) from None
        saved.update(last=step, ours=True)

    can_trap = checkpointing and _in_main_thread()
    if can_trap:
        signal.signal(signal.SIGINT, request_stop)
    step = start
    try:
        bar = tqdm(range(start, total), initial=start, total=total, desc=desc, dynamic_ncols=True, disable=not progress)
        for step in bar:
            metrics = step_fn(step)
            bad = [(k, v) for k, v in metrics.items() if not math.isfinite(v)]
            if bad:
                raise Diverged(f"{desc}: the {bad[0][0]} is {bad[0][1]} at step {step + 1}/{total}: training diverged")
            bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()}, refresh=False)
            done = step + 1
            if stop["requested"]:
                save(done)
                raise Interrupted(
                    f"{desc}: stopped after step {done}/{total}; checkpoint saved. "
                    "Run the same command with --resume to continue."
                )
            if done % every == 0 and done < total:
                save(done)
        save(total)
    except Diverged as err:
        removed = ""
        if saved["ours"] and path is not None and path.exists():
            path.unlink()
            if new_folder:
                with contextlib.suppress(OSError):
                    path.parent.rmdir()
            removed = f"; its checkpoint {path} was removed (resuming it would diverge again)"
        raise Diverged(f"{err}{removed}{diverged_hint}") from None
    except (KeyboardInterrupt, Terminated) as err:
        if saved["last"] is None or path is None:
            raise
        what = "terminated" if isinstance(err, Terminated) else "interrupted"
        status = 143 if isinstance(err, Terminated) else 130
        raise Interrupted(f"{desc}: {what} during step {step + 1}/{total}; {kept()}", status) from None
    finally:
        if can_trap:
            signal.signal(signal.SIGINT, previous)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def save_checkpoint(path: str | Path, step: int, config: dict, *, kind: str = "training", **state) -> None:
    """Write a resumable checkpoint: state dicts (model, optimizer, EMA...) plus the step and config.

    `kind` (the job: "esd", "amnesia"...) is written as the file's marker. A state holding a non-finite value
    is refused (`Diverged`): a checkpoint is never garbage.
    """
    bad = _first_nonfinite(state)
    if bad is not None:
        raise Diverged(f"not writing the checkpoint {path}: {bad} holds non-finite values (training diverged)")
    marker = json.dumps({"format": CHECKPOINT_FORMAT, "kind": kind})
    save_tree(path, {"step": step, "config": config, **state}, metadata={_MARKER: marker})


def _first_nonfinite(tree, name: str = "state") -> str | None:
    if isinstance(tree, torch.Tensor):
        return name if tree.is_floating_point() and not bool(torch.isfinite(tree).all()) else None
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list | tuple) else ()
    for key, value in items:
        found = _first_nonfinite(value, f"{name}.{key}" if name != "state" else str(key))
        if found is not None:
            return found
    return None


def _metadata(path: Path) -> dict | None:
    """A safetensors file's metadata ({} when it has none); None when it is not a readable safetensors file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return None


def _marker(meta: dict | None) -> dict | None:
    try:
        marker = json.loads((meta or {}).get(_MARKER, "null"))
    except json.JSONDecodeError:
        return None
    return marker if isinstance(marker, dict) and marker.get("format") == CHECKPOINT_FORMAT else None


def describe_file(path: str | Path) -> str:
    """What a file is, for a message: "a folder", "an edit", "a esd checkpoint", "not a safetensors file"..."""
    path = Path(path)
    if path.is_dir():
        return "a folder"
    if not path.exists():
        return "missing"
    meta = _metadata(path)
    if meta is None:
        return "not a readable safetensors file (damaged, truncated or another format)"
    marker = _marker(meta)
    if marker is not None:
        return f"a checkpoint of {marker.get('kind')}"
    known = {"concept_edit": "a concept-edit edit", "amnesia": "a Selective Amnesia Fisher file",
             "cad": "a CAD scores file", "tree": "a checkpoint of an older concept-edit version"}  # fmt: skip
    for key, what in known.items():
        if key in meta:
            return what
    return "a safetensors file that is not a checkpoint (no checkpoint marker)"


def check_checkpoint(path: str | Path, kind: str, config: dict | None = None) -> dict:
    """Before any work: the checkpoint at `path` is a readable `kind` checkpoint (made with `config`, if given).

    Returns its skeleton (step, config; no tensors are read). Anything else is refused with one line naming
    the file and what it is.
    """
    path = Path(path)
    meta = None if path.is_dir() else _metadata(path)
    marker = _marker(meta)
    legacy = kind == "training" and meta is not None and marker is None and "tree" in meta
    if (marker is None or marker.get("kind") != kind) and not legacy:
        raise ValueError(f"--resume: {path} is not {_a(kind)} checkpoint: it is {describe_file(path)}")
    try:
        skeleton = json.loads(meta["tree"])
        step, saved = skeleton["step"], skeleton["config"]
    except (KeyError, TypeError, json.JSONDecodeError):
        raise ValueError(f"--resume: {path} is not a readable {kind} checkpoint (its header is damaged)") from None
    config = json.loads(json.dumps(config)) if config is not None else None
    if config is not None and saved != config:
        diff = {k: (saved.get(k), v) for k, v in config.items() if saved.get(k) != v}
        raise ValueError(
            f"checkpoint {path} was made with a different configuration {diff}; "
            "use the same options to resume, or a new --out folder to start over"
        )
    return {"step": step, "config": saved}


def load_checkpoint(path: str | Path, config: dict, kind: str = "training") -> dict:
    """Read a `kind` checkpoint written by `save_checkpoint`; refuse one made with a different config, or a
    file that is not such a checkpoint, is damaged or holds non-finite values (naming the file)."""
    check_checkpoint(path, kind, config)
    try:
        tree = load_tree(path)
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise ValueError(
            f"--resume: {path} is not a readable {kind} checkpoint (damaged or truncated: {err})"
        ) from None
    bad = _first_nonfinite(tree)
    if bad is not None:
        raise ValueError(f"--resume: the checkpoint {path} holds non-finite values ({bad}); start over with --force")
    return tree


def _a(word: str) -> str:
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def paths_overlap(a: Path, b: Path) -> bool:
    a, b = Path(a).resolve(), Path(b).resolve()  # `..` and symlinks resolved: one file, however it is spelt
    return a == b or a in b.parents or b in a.parents


def check_checkpoint_slot(
    path: str | Path,
    kind: str,
    *,
    resume: bool,
    force: bool,
    outputs: Sequence[Path] = (),
    partials: Sequence[tuple[Path, str]] = (),
) -> Path:
    """Before any work, refuse a --checkpoint the run must not use (one line each): empty; the same as, inside
    or around an output (a finished run deletes its checkpoint); under a file; a folder; an existing file that
    is not this kind's checkpoint (never overwritten, even with `force`); one left by an interrupted run
    (unless `resume` or `force`); none at all with `resume`. `partials`: other checkpoint files of the run
    (an amnesia Fisher), checked the same way."""
    if not str(path).strip():
        raise ValueError("--checkpoint is empty: give a file name")
    path = Path(path)
    for out in outputs:
        if paths_overlap(path, out):
            raise ValueError(
                f"--checkpoint {path} is the output {out} (or inside it, or around it): a finished run deletes its "
                "checkpoint; give another path"
            )
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"--checkpoint {path}: {parent} is a file, not a folder")
    if path.is_dir():
        raise ValueError(f"--checkpoint {path} is a folder; give a file name (such as {path / 'run.safetensors'})")
    existing = []
    for file, what in ((path, kind), *partials):
        if not file.exists():
            continue
        marker = _marker(None if file.is_dir() else _metadata(file))
        if marker is None or marker.get("kind") != what:
            raise ValueError(
                f"--checkpoint: {file} is not {_a(what)} checkpoint: it is {describe_file(file)}; it is left alone: "
                "give another --checkpoint path"
            )
        existing.append(file)
    if resume and not existing:
        raise ValueError(f"--resume: there is no checkpoint at {path}")
    if existing and not resume and not force:
        raise ValueError(
            f"an interrupted run left a checkpoint at {existing[0]}: pass --resume to continue it, or --force to "
            "start over"
        )
    return path


def resume(path: str | Path, config: dict, **stateful) -> int:
    """Restore each object's `load_state_dict` from the checkpoint at `path`; the step to start from (0 if none)."""
    if not Path(path).exists():
        return 0
    state = load_checkpoint(path, config)
    for name, obj in stateful.items():
        obj.load_state_dict(state[name])
    log.info("resumed %s from step %d", path, state["step"])
    return state["step"]
