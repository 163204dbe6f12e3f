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
import dataclasses
import logging
import signal
import sys
import threading
import traceback
from pathlib import Path

from concept_edit.cli.flags import dataclass_flags
from concept_edit.cli.support import (
    add_edit_args,
    add_force,
    add_generation_args,
    add_model_args,
    check_output,
    edit_inputs,
    load_edits,
    load_model,
    number,
    seed_type,
)
from concept_edit.stopping import Interrupted, Terminated

log = logging.getLogger("concept_edit")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _values(args: argparse.Namespace, names: list[str]) -> dict:
    return {n: tuple(v) if isinstance(v, list) else v for n in names if (v := getattr(args, n, None)) is not None}


def _request_lists(args: argparse.Namespace) -> dict:
    """Concepts (with their guides), preserved concepts and attributes from the flags and the --*-file lists.

    A concepts-file line `concept: guide` erases that concept toward its own guide; `--guide` given once is
    every concept's guide, given once per concept it pairs with the concepts in order.
    """
    from concept_edit.methods import read_list_file

    lists: dict = {}
    from_file = 0  # concepts at index >= this came from --concepts-file, where 'concept: guide' is read
    for name, flag in (("concepts", "concept"), ("preserve", "preserve"), ("attributes", "attribute")):
        values = list(getattr(args, flag) or ())
        if name == "concepts":
            from_file = len(values)
        path = getattr(args, f"{name}_file")
        if path is not None:
            values += read_list_file(path)
        lists[name] = values
    flags = list(args.guide or [])
    if len(flags) > 1 and len(flags) != len(lists["concepts"]):
        raise ValueError(f"{len(flags)} --guide given for {len(lists['concepts'])} concepts: give one, or one each")
    guides = flags if len(flags) > 1 else [flags[0] if flags else None] * len(lists["concepts"])
    for k, line in enumerate(lists["concepts"]):
        if k < from_file:
            continue  # a --concept flag is taken as written, colons included
        concept, colon, guide = line.partition(":")
        if colon:
            if len(flags) > 1:
                raise ValueError(f"concept {line!r} names its guide in the file and --guide names one too")
            lists["concepts"][k], guides[k] = concept.strip(), guide.strip()
    single = set(guides) == {guides[0]} if guides else True
    lists["guide"] = guides[0] if single and guides else None
    lists["guides"] = () if single else tuple(g or "" for g in guides)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in lists.items()}


# -- verbs ---------------------------------------------------------------------------------------------------
def cmd_methods(args: argparse.Namespace) -> None:
    from concept_edit.methods import available_methods, get_method

    for name in available_methods():
        m = get_method(name)
        print(f"{name:10s} modes: {', '.join(m.modes):28s} {m.summary}")


def cmd_edit(args: argparse.Namespace) -> None:
    from concept_edit.edit import applied, resolve_edit_path
    from concept_edit.methods import EditRequest, fit, get_method, make_config, make_inputs

    out = resolve_edit_path(args.out, for_writing=True)
    target = check_output(out, force=args.force, inputs=edit_inputs(args.edit))
    method = get_method(args.method)
    config = make_config(args.method, **_values(args, args.config_fields))
    lists = _request_lists(args)
    request = EditRequest(
        concepts=lists["concepts"],
        mode=args.mode,
        guide=lists["guide"],
        guides=lists["guides"],
        preserve=lists["preserve"],
        attributes=lists["attributes"],
        ratios=tuple(args.ratio) if args.ratio else None,
    )
    values = _values(args, args.input_fields)
    checkpoint = _checkpoint_path(args, method, target, values)
    below = load_edits(args.edit)
    pipe = load_model(args, text_to_image=False)  # the registry refuses methods that cannot train digits models
    for f in dataclasses.fields(method.inputs_cls):  # text specs (a judge...) become objects for this pipeline
        parse = f.metadata.get("parse")
        if parse is not None and f.name in values:
            values[f.name] = parse(values[f.name], pipe)
    with applied(pipe, *below):
        edit = fit(pipe, args.method, request, config, make_inputs(args.method, **values), seed=args.seed)
    if args.store_dtype:
        import torch

        edit = edit.astype(getattr(torch, args.store_dtype))
    from concept_edit.io import kept_on_full_disk

    with kept_on_full_disk(target, checkpoint, "the finished training"):
        edit.save(target)
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)  # the run is finished: its edit replaces its checkpoint
    kinds = ", ".join(sorted(set(edit.kinds)))
    concepts = list(request.concepts)
    print(f"wrote {target} ({len(edit.entries)} changes: {kinds}; method {args.method}, concepts {concepts})")
    stats = edit.manifest.get("stats", {})
    if "final_loss" in stats:
        loss = f"{stats['final_loss']:.4g}"
        print(f"{args.method}: {stats['iterations']} iterations, final loss {loss}")
    if "final_ratios" in stats:
        print(f"debias: {stats['iterations']} iterations, final ratios {stats['final_ratios']}")


def _checkpoint_path(args: argparse.Namespace, method, target: Path, values: dict) -> Path | None:
    """A training method's checkpoint: --checkpoint, else beside the edit it will become. Refused before any work
    when it is not this method's checkpoint, would clobber one, or is (part of) the output or a cache."""
    from concept_edit.training import check_checkpoint_slot, paths_overlap
    from concept_edit.validation import check_number

    names = {f.name for f in dataclasses.fields(method.inputs_cls)}
    fisher = values.get("fisher")
    if fisher is not None and paths_overlap(Path(fisher), target):
        raise ValueError(f"--fisher {fisher} is the output {target} (or holds it); give the Fisher cache its own path")
    if "checkpoint" not in names:
        return None
    check_number("--checkpoint-every", values.get("checkpoint_every", 1), low=1, integer=True)
    given = "checkpoint" in values
    path = Path(values.setdefault("checkpoint", target.parent / f"{target.stem}.checkpoint.safetensors"))
    partials = []
    if args.method == "amnesia":
        from concept_edit.methods.amnesia.fit import fisher_checkpoint

        partials = [(fisher_checkpoint(path), "amnesia-fisher")]
        if fisher is not None and paths_overlap(Path(fisher), path):
            raise ValueError(f"--fisher {fisher} and --checkpoint {path} overlap; give them separate paths")
    return check_checkpoint_slot(path, args.method, resume=bool(values.get("resume")), force=args.force,
                                 outputs=[target] if given else [], partials=partials)  # fmt: skip


def cmd_generate(args: argparse.Namespace) -> None:
    from concept_edit.edit import applied
    from concept_edit.generation import generate, image_grid

    out = Path(args.out)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"--out must be an image file ({', '.join(IMAGE_SUFFIXES)}), got {out}")
    check_output(out, force=args.force, inputs=edit_inputs(args.edit))
    edits = load_edits(args.edit)
    pipe = load_model(args)
    prompts = [p for p in args.prompt for _ in range(args.n)]
    seeds = [args.seed + k for _ in args.prompt for k in range(args.n)]
    with applied(pipe, *edits, allow_repeat=args.allow_repeat):
        images = generate(pipe, prompts, seeds, steps=args.steps, guidance=args.guidance, progress=True)
    from concept_edit.io import atomic_path

    with atomic_path(out) as tmp:
        image_grid(images, cols=args.n).save(tmp, format=out.suffix.lstrip(".").upper().replace("JPG", "JPEG"))
    print(f"wrote {out} ({len(args.prompt)} prompt(s) x {args.n} seeds from {args.seed})")


def cmd_attention(args: argparse.Namespace) -> None:
    from concept_edit.attention_maps import attention_maps, save_attention_grid
    from concept_edit.edit import applied
    from concept_edit.io import atomic_path

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must be a .png file, got {out}")
    check_output(out, force=args.force, inputs=edit_inputs(args.edit))
    edits = load_edits(args.edit)
    pipe = load_model(args)
    with applied(pipe, *edits, allow_repeat=args.allow_repeat):
        maps, image = attention_maps(
            pipe, args.prompt, args.token, seed=args.seed, steps=args.steps, guidance=args.guidance
        )
    with atomic_path(out) as tmp:
        save_attention_grid(maps, image, tmp, title=f"{args.token!r} in {args.prompt!r} (seed {args.seed})")
    print(f"wrote {out}: {len(maps)} cross-attention layers (rows, by index) x denoising steps")


def cmd_export(args: argparse.Namespace) -> None:
    from concept_edit.export import export_pipeline, keep_complete_output, stop_signals

    check_output(args.out, force=args.force, folder=True, inputs=[args.model])
    edits = load_edits(args.edit)
    if not args.allow_repeat and len({e.identity for e in edits}) < len(edits):
        raise ValueError("the same edit is given twice; pass --allow-repeat to apply it twice")
    pipe = load_model(args)
    with stop_signals():  # one watch from the first file written to the line saying it is done
        out = export_pipeline(pipe, edits, args.out, args.model, force=args.force)
        print(f"wrote diffusers pipeline to {out}", flush=True)
        keep_complete_output(entry=(__name__, "main"))


def cmd_export_lora(args: argparse.Namespace) -> None:
    from concept_edit.export import keep_complete_output, stop_signals
    from concept_edit.lora_export import lora_tensors, write_lora

    out = check_output(args.out, force=args.force, suffix=".safetensors", inputs=edit_inputs(args.edit))
    edits = load_edits(args.edit)
    pipe = load_model(args)
    tensors, report = lora_tensors(pipe, edits, rank=args.rank, max_error=args.max_error, skip_biases=args.skip_biases,
                                   allow_dropped_biases=args.allow_dropped_biases, fmt=args.format)  # fmt: skip
    ranks = sorted({m["rank"] for m in report.modules.values()})
    worst = max(m["relative_error"] for m in report.modules.values())
    with stop_signals():  # one watch from the file's first byte to the lines saying it is done
        write_lora(pipe, edits, tensors, report, out, fmt=args.format)
        print(f"wrote {out}: {len(report.modules)} LoRA pairs ({args.format} keys), rank "
              f"{'-'.join(map(str, ranks))}, relative error {report.relative_error:.3g} overall, {worst:.3g} at "
              "worst per tensor")  # fmt: skip
        if report.dropped_biases:
            print(f"dropped {len(report.dropped_biases)} bias change(s): {report.dropped_share:.3g} of the edit's "
                  "change (||dropped|| / ||edit||); the LoRA is the edit without them")  # fmt: skip
        for target, share in report.dropped_biases.items():
            print(f"  {target}: change {share:.3g} of that bias's norm")
        sys.stdout.flush()
        keep_complete_output(entry=(__name__, "main"))


def cmd_compose(args: argparse.Namespace) -> None:
    from concept_edit.edit import compose, resolve_edit_path

    target = check_output(
        resolve_edit_path(args.out, for_writing=True), force=args.force, inputs=edit_inputs(args.edit)
    )
    edits = load_edits(args.edit)
    merged = compose(load_model(args, text_to_image=False), *edits, allow_repeat=args.allow_repeat)
    if args.store_dtype:
        import torch

        merged = merged.astype(getattr(torch, args.store_dtype))
    merged.save(target)
    print(f"wrote {target}: {' + '.join(e.name for e in edits)}")


def cmd_inspect(args: argparse.Namespace) -> None:
    import json

    from concept_edit.cli.support import read_manifest

    manifest = read_manifest(args.edit)  # the file's header only: no torch, no tensor read
    changes = manifest.pop("changes")
    kinds = [c.get("kind") for c in changes]
    if args.full:
        manifest["changes"] = [{k: v for k, v in c.items() if k != "tensors"} for c in changes]
    else:
        manifest["changes"] = ", ".join(f"{kinds.count(kind)} {kind}" for kind in sorted(set(kinds)))
        manifest.get("stats", {}).pop("history", None)
    print(json.dumps(manifest, indent=2))


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, `concept-edit ...: error: ...` with exit status 2, like every other refusal."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_store_dtype(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store-dtype",
        choices=("float32", "float16", "bfloat16"),
        default=None,
        help="dtype of the stored weight changes (default: dense and sparse in the model's dtype, low-rank float32)",
    )


# -- parser --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from concept_edit._version import __version__
    from concept_edit.methods import MODES, available_methods, get_method

    parser = _Parser(prog="concept-edit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"concept-edit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    verbs.add_parser("methods", help="list the editing methods").set_defaults(func=cmd_methods, light=True)

    edit = verbs.add_parser("edit", help="compute an edit and write it to an edit file")
    per_method = edit.add_subparsers(dest="method", required=True, metavar="METHOD")
    for name in available_methods():
        method = get_method(name)
        p = per_method.add_parser(name, help=method.summary, description=method.summary)
        add_model_args(p)
        p.add_argument(
            "--edit", action="append", help="fit on top of this edit (repeat); apply it before the new one later"
        )
        p.add_argument("--concept", action="append", help="a concept to edit (repeat for several)")
        p.add_argument(
            "--concepts-file", type=Path, metavar="PATH", help="concepts to edit, one per line ('concept: guide')"
        )
        p.add_argument("--mode", choices=[m for m in MODES if m in method.modes], default=method.modes[0])
        p.add_argument(
            "--guide",
            action="append",
            help="erase towards this concept (default: the method's); once per concept to pair them in order",
        )
        p.add_argument("--preserve", action="append", help="a concept to preserve (repeat)")
        p.add_argument("--preserve-file", type=Path, metavar="PATH", help="concepts to preserve, one per line")
        p.add_argument("--attribute", action="append", help="debias: an attribute to balance (repeat)")
        p.add_argument("--attributes-file", type=Path, metavar="PATH", help="debias: attributes, one per line")
        p.add_argument(
            "--ratio", action="append", type=number("--ratio", low=0, high=1), help="debias: desired share (repeat)"
        )
        p.add_argument("--seed", type=seed_type(), default=0)
        p.add_argument("--out", required=True, help="edit folder (gets edit.safetensors) or .safetensors path")
        add_force(p)
        _add_store_dtype(p)
        config_fields = dataclass_flags(p.add_argument_group(f"{name} options"), method.config_cls)
        input_fields = dataclass_flags(p.add_argument_group(f"{name} inputs"), method.inputs_cls)
        p.set_defaults(func=cmd_edit, config_fields=config_fields, input_fields=input_fields)

    gen = verbs.add_parser("generate", help="generate a grid of images, optionally with edits applied")
    add_model_args(gen)
    add_edit_args(gen)
    gen.add_argument("--prompt", action="append", required=True, help="a prompt (repeat: one row each)")
    gen.add_argument("-n", type=number("-n", low=1, integer=True), default=8, help="images per prompt (seeds seed..)")
    gen.add_argument("--seed", type=seed_type(), default=0)
    add_generation_args(gen)
    gen.add_argument("--out", required=True, help="grid image file (.png/.jpg/.webp)")
    add_force(gen)
    gen.set_defaults(func=cmd_generate)

    att = verbs.add_parser("attention", help="cross-attention maps of one token, per layer and step, as a PNG grid")
    add_model_args(att)
    add_edit_args(att)
    att.add_argument("--prompt", required=True)
    att.add_argument("--token", required=True, help="the word (as it appears in the prompt) whose maps to show")
    att.add_argument("--seed", type=seed_type(), default=0)
    add_generation_args(att)
    att.add_argument("--out", required=True, help="grid image file (.png)")
    add_force(att)
    att.set_defaults(func=cmd_attention)

    export = verbs.add_parser("export", help="write a full diffusers pipeline folder with edits applied")
    add_model_args(export)
    add_edit_args(export, required=True)
    export.add_argument("--out", required=True, help="a new (or empty) folder")
    add_force(export)
    export.set_defaults(func=cmd_export)

    lora_help = "write edits as a LoRA file for diffusers, ComfyUI, AUTOMATIC1111"
    lora = verbs.add_parser("export-lora", help=lora_help, description=lora_help)
    add_model_args(lora)
    add_edit_args(lora, required=True)
    lora.add_argument("--rank", type=number("--rank", low=1, integer=True),
                      help="rank of every LoRA pair (default: low-rank changes keep theirs; dense ones get the "
                           "smallest rank within --max-error)")  # fmt: skip
    lora.add_argument("--format", choices=("kohya", "diffusers"), default="kohya",
                      help="kohya (default): keys that ComfyUI, AUTOMATIC1111, kohya's scripts and diffusers load "
                           "(SDXL in kohya's LDM layout); diffusers: peft keys for diffusers only (ComfyUI and "
                           "AUTOMATIC1111 ignore it)")  # fmt: skip
    lora.add_argument("--max-error", type=number("--max-error", low=0, high=0.999), default=0.01,
                      help="largest relative error a compressed tensor, or the bias changes --skip-biases drops, "
                           "may have (default: 0.01)")  # fmt: skip
    lora.add_argument("--skip-biases", action="store_true",
                      help="drop bias changes (a LoRA cannot hold them) when they are at most --max-error of the "
                           "edit's change; the share dropped is printed and stored")  # fmt: skip
    lora.add_argument("--allow-dropped-biases", action="store_true",
                      help="drop bias changes however large a share of the edit they are (the LoRA is then "
                           "not the same edit)")  # fmt: skip
    lora.add_argument("--out", required=True, help="the LoRA .safetensors file")
    add_force(lora)
    lora.set_defaults(func=cmd_export_lora)

    comp = verbs.add_parser("compose", help="merge several edits into one edit file")
    add_model_args(comp)
    add_edit_args(comp, required=True)
    comp.add_argument("--out", required=True)
    add_force(comp)
    _add_store_dtype(comp)
    comp.set_defaults(func=cmd_compose)

    insp = verbs.add_parser("inspect", help="print an edit's manifest")
    insp.add_argument("edit")
    insp.add_argument("--full", action="store_true", help="include every tensor and the debias history")
    insp.set_defaults(func=cmd_inspect, light=True)

    _add_evaluation_verbs(verbs)
    return parser


def _add_evaluation_verbs(verbs) -> None:
    from concept_edit.cli import attacks, cad, evaluation

    cad.add_verbs(verbs)
    evaluation.add_verbs(verbs)
    attacks.add_verbs(verbs)


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
        if name == "out" and getattr(args, "func", None) in (cmd_edit, cmd_compose):
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
