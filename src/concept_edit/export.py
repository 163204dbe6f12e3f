"""Write a full diffusers pipeline folder with edits baked in, for tools that need one.

The folder is written beside its destination and renamed into place only when complete (an interrupted
export leaves nothing behind). Ctrl-C and SIGTERM are watched while files are written: a KeyboardInterrupt
raised inside torch's or safetensors' writers can come back as an unrelated error (such as "could not
determine the shape of object type 'UntypedStorage'"), which is then reported as the interrupt it was; from
the rename on, the output is complete and a stop signal no longer undoes or misreports it. It carries a
`concept_edit.json` that names the base model and the edits, so the export can be traced (and a ShapesSD
export is still evaluated with the shapes-world oracle).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from concept_edit.edit import Edit, applied
from concept_edit.io import atomic_folder, write_json
from concept_edit.models.loading import model_info
from concept_edit.stopping import Terminated

log = logging.getLogger(__name__)

_WATCHED = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """The stop signals received in a `stop_signals()` block.

    Until `complete()` a signal stops the block at once (KeyboardInterrupt, or Terminated for SIGTERM) and is
    remembered, so that `deliver()` can report it even if a writer turned it into another error or swallowed
    it; after `complete()` (the output is in place) a signal is only noted."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.completed = False
        self.previous: dict[int, object] = {}  # the handlers to restore when the outermost block ends

    def deliver(self) -> None:
        """Raise the first signal received, if any, as the CLI reports it."""
        if self.received:
            raise KeyboardInterrupt if self.received[0] == signal.SIGINT else Terminated

    def complete(self) -> None:
        """The output is about to become complete (the rename): from here a stop signal no longer stops."""
        self.deliver()
        self.completed = True

    def _on_signal(self, signum, frame) -> None:
        self.received.append(signum)
        if not self.completed:
            self.deliver()


_current: StopSignals | None = None


@contextlib.contextmanager
def stop_signals() -> Iterator[StopSignals]:
    """Watch Ctrl-C and SIGTERM for the block (re-entrant: an inner block shares the outer one's record).

    Outside the main thread (where signal handlers cannot be set) nothing is watched.
    """
    global _current
    if _current is not None or threading.current_thread() is not threading.main_thread():
        yield _current or StopSignals()
        return
    watch = _current = StopSignals()
    watch.previous = {s: signal.signal(s, watch._on_signal) for s in _WATCHED}
    try:
        yield watch
        if watch.received:
            log.info("a stop signal arrived once the output was complete: it is kept")
    finally:
        _current = None
        for s, handler in watch.previous.items():  # (keep_complete_output may have replaced SIGINT's)
            signal.signal(s, handler)


def keep_complete_output(entry: tuple[str, str]) -> None:
    """From now until the program ends, a Ctrl-C cannot undo or misreport output that is complete and reported.

    Called by a CLI verb once its output is in place and its last line printed, with its entry point `entry`
    (module name, function name). A Ctrl-C in what is left of that function (the CLI's `main`: releasing locks,
    flushing) would be reported as "nothing was written", and one
    during the interpreter's exit (torch's atexit finalizers) prints a KeyboardInterrupt traceback; both are
    dropped. Elsewhere (a program that called `main` and goes on) Ctrl-C does what it did before.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    previous = _current.previous.get(signal.SIGINT) if _current is not None else signal.getsignal(signal.SIGINT)
    if getattr(previous, "_keeps_output", False):
        return

    def late(signum, frame) -> None:
        if frame is None or (frame.f_back is None and frame.f_globals.get("__name__") == "__main__"):
            return  # the interpreter is shutting down, or the program's last line (`sys.exit(main())`) runs
        stack = frame
        while True:  # still in the CLI's main: drop it
            if (stack.f_globals.get("__name__"), stack.f_code.co_name) == entry:
                return
            if stack.f_back is None:
                break
            stack = stack.f_back
        if stack.f_globals.get("__name__") == "threading" and stack.f_code.co_name == "_shutdown":
            return  # the interpreter's exit waits for threads (before the atexit hook that ignores Ctrl-C)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    late._keeps_output = True
    if _current is not None:  # inside a hold: installed when it ends, leaving no moment between the two
        _current.previous[signal.SIGINT] = late
    else:
        signal.signal(signal.SIGINT, late)
    atexit.unregister(_ignore_sigint)  # once, however many verbs run in this process
    atexit.register(_ignore_sigint)  # after torch's exit hooks, so it runs before them (last in, first out)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def export_pipeline(pipe, edits: list[Edit], out: str | Path, spec: str | None = None, *, force: bool = False) -> Path:
    """Save `pipe` with `edits` applied to the folder `out` (safetensors weights). `pipe` is unchanged.

    `out` must be new or an empty folder, unless `force`, which replaces it once the export is complete.
    """
    out = Path(out)
    hooked = [e.name for e in edits if "activation" in e.kinds]
    if hooked:
        raise ValueError(
            f"{hooked[0]} changes activations through forward hooks, which a diffusers folder cannot hold; "
            "apply it with concept-edit (--edit, or concept_edit.apply) instead of exporting it, or remake it with "
            "--fold where the method offers it (eigen)"
        )
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty folder; choose a new --out or pass --force")
    with stop_signals() as stop, atomic_folder(out, replace=force) as tmp:
        try:
            with applied(pipe, *edits):
                pipe.save_pretrained(tmp, safe_serialization=True)
            info = model_info(pipe)
            write_json(
                tmp / "concept_edit.json",
                {
                    "base_model": spec or info.spec,
                    "world": info.world,
                    "edits": [
                        {k: e.manifest.get(k) for k in ("method", "concepts", "config", "seed", "base_hash")}
                        for e in edits
                    ],
                },
            )
        except Exception:
            stop.deliver()  # an interrupt that surfaced inside a writer as another error is reported as one
            raise
        stop.complete()  # an interrupt a writer swallowed stops here; after it, the rename makes the output whole
    return out
