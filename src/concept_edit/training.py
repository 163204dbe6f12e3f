"""A resumable step loop shared by every long job (oracle, VAE and UNet training; later fine-tuning methods).

* progress: a tqdm bar with the step's metrics;
* interruption: Ctrl-C (SIGINT) is deferred to the end of the current step, a checkpoint is written, and
  the job exits telling how to resume; a second Ctrl-C aborts at once;
* reproducibility: callers derive each step's randomness from (seed, step) with `step_rng`, so a resumed
  run draws exactly the batches an uninterrupted one would have drawn.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from concept_edit.io import load_tree, save_tree
from concept_edit.stopping import Interrupted

__all__ = ["Interrupted", "load_checkpoint", "resume", "run_steps", "save_checkpoint", "step_generator", "step_rng"]

log = logging.getLogger(__name__)


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
) -> None:
    """Run steps [start, total); checkpoint every `every` steps, at the end, and on Ctrl-C.

    Without `checkpointing` (nowhere to save), Ctrl-C is left alone and interrupts at once.
    """
    stop = {"requested": False}
    previous = signal.getsignal(signal.SIGINT)

    def request_stop(signum, frame):  # noqa: ARG001 - signal handler signature
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        log.warning("interrupt received: finishing this step and writing a checkpoint (Ctrl-C again to abort)")

    can_trap = checkpointing and _in_main_thread()
    if can_trap:
        signal.signal(signal.SIGINT, request_stop)
    try:
        bar = tqdm(range(start, total), initial=start, total=total, desc=desc, dynamic_ncols=True, disable=not progress)
        for step in bar:
            metrics = step_fn(step)
            bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()}, refresh=False)
            done = step + 1
            if stop["requested"]:
                save_fn(done)
                raise Interrupted(
                    f"{desc}: stopped after step {done}/{total}; checkpoint saved. "
                    "Run the same command with --resume to continue."
                )
            if done % every == 0 and done < total:
                save_fn(done)
        save_fn(total)
    finally:
        if can_trap:
            signal.signal(signal.SIGINT, previous)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def save_checkpoint(path: str | Path, step: int, config: dict, **state) -> None:
    """Write a resumable checkpoint: state dicts (model, optimizer, EMA...) plus the step and config."""
    save_tree(path, {"step": step, "config": config, **state})


def load_checkpoint(path: str | Path, config: dict) -> dict:
    """Read a checkpoint written by `save_checkpoint`; refuse one made with a different config."""
    tree = load_tree(path)
    if tree["config"] != config:
        diff = {k: (tree["config"].get(k), v) for k, v in config.items() if tree["config"].get(k) != v}
        raise ValueError(
            f"checkpoint {path} was made with a different configuration {diff}; "
            "use the same options to resume, or a new --out folder to start over"
        )
    return tree


def resume(path: str | Path, config: dict, **stateful) -> int:
    """Restore each object's `load_state_dict` from the checkpoint at `path`; the step to start from (0 if none)."""
    if not Path(path).exists():
        return 0
    state = load_checkpoint(path, config)
    for name, obj in stateful.items():
        obj.load_state_dict(state[name])
    log.info("resumed %s from step %d", path, state["step"])
    return state["step"]
