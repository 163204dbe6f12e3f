"""`concept-edit <verb>`: every verb maps to one library call.

    concept-edit edit uce --model shapes --concept circle --out edits/no-circle
    concept-edit generate --model shapes --edit edits/no-circle --prompt "a circle" -n 8 --out grid.png
    concept-edit export --model shapes --edit edits/no-circle --out shapes-no-circle/
Errors in the input are reported as one line and exit status 2; nothing is written. Ctrl-C (or SIGTERM)
stops a verb with one line and exit status 130 (143), leaving no partial file behind; `-v` shows
tracebacks.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import traceback

from concept_edit.cli import attacks, cad, edit, evaluation, tools
from concept_edit.stopping import Interrupted, Terminated

log = logging.getLogger("concept_edit")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, `concept-edit ...: error: ...` with exit status 2, like every other refusal."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# -- parser --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from concept_edit._version import __version__

    parser = _Parser(prog="concept-edit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"concept-edit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    # a verb that writes a file calls keep_complete_output with this entry point: the `main` below
    parser.set_defaults(entry=(__name__, "main"))

    for verbs_of in (edit, tools, cad, evaluation, attacks):  # this order is the order of `--help`
        verbs_of.add_verbs(verbs)
    return parser


def _quiet_libraries() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        import diffusers
        import transformers

        diffusers.logging.set_verbosity_error()
        transformers.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def _on_sigterm(signum, frame) -> None:
    raise Terminated


def _outputs(args: argparse.Namespace) -> list:
    """What a verb writes (--out, --checkpoint, --fisher, --store), to lock; none on the non-main processes of
    `accelerate launch`, which share the main process's outputs."""
    import os

    if os.environ.get("RANK", "0") not in ("", "0"):
        return []
    paths = []
    for name in ("out", "checkpoint", "fisher", "store"):
        value = getattr(args, name, None)
        if value is not None and not str(value).strip():
            raise ValueError(f"--{name} is empty: give a path")
        if value is None:
            continue
        if name == "out" and getattr(args, "writes_edit", False):
            from concept_edit.edit.file import resolve_edit_path

            value = resolve_edit_path(value, for_writing=True)  # `e` and `e/edit.safetensors` are one output
        paths.append(value)
    return paths


def _describe(err: Exception) -> str:
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.strerror or type(err).__name__}: {err.filename}"
    return str(err)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush does not fail on the closed pipe again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real stdout (a test's capture): nothing to flush
        pass


def main(argv: list[str] | None = None) -> int:
    """Run one verb. Exit 0, or 2 with one line for bad input, 130/143 when interrupted, 1 for a bug."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a usage error already printed as one line
        return int(stop.code or 0)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "light", False):  # verbs that read no model never import diffusers
        _quiet_libraries()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        lock = contextlib.nullcontext()
        if outputs := _outputs(args):  # (concept_edit.io imports torch: only for a verb that writes)
            from concept_edit.io import output_lock

            lock = output_lock(*outputs)  # one run at a time per output
        with lock:
            args.func(args)
        sys.stdout.flush()  # a closed pipe is found here, not in the interpreter's last flush
    except Interrupted as stop:  # a training method wrote its checkpoint first
        print(f"\nconcept-edit: {stop}", file=sys.stderr)
        return stop.status
    except (KeyboardInterrupt, Terminated) as stop:
        what = "terminated" if isinstance(stop, Terminated) else "interrupted"
        print(f"\nconcept-edit: {what}: {args.verb} stopped before it finished; nothing was written", file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130
    except BrokenPipeError:  # the reader went away (`concept-edit inspect e | head -1`): stop quietly, as `cat` does
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a command its pipe's reader stopped
    except (ValueError, OSError) as err:  # bad input (EditError and ModelLoadError are ValueErrors)
        if args.verbose:
            traceback.print_exc()
        print(f"concept-edit: error: {_describe(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # a bug: one line, the traceback with -v
        if args.verbose:
            raise
        print(
            f"concept-edit: internal error ({type(err).__name__}: {err}); rerun with -v for the traceback and "
            "please report it",
            file=sys.stderr,
        )
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0
