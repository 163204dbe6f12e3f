"""CLI verbs that make an edit: `methods` (list the editing methods) and `edit METHOD` (fit one, write its file).

A method's flags are rendered from its config and inputs dataclasses (`cli.flags`); the concept lists come from
the flags and the --*-file lists (`_request_lists`).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from concept_edit.cli.flags import dataclass_flags
from concept_edit.cli.support import (
    add_force,
    add_model_args,
    add_store_dtype,
    check_output,
    edit_inputs,
    load_edits,
    load_model,
    number,
    seed_type,
    stored_as,
)


def add_verbs(verbs) -> None:
    from concept_edit.methods import MODES, available_methods, get_method

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
        add_store_dtype(p)
        config_fields = dataclass_flags(p.add_argument_group(f"{name} options"), method.config_cls)
        input_fields = dataclass_flags(p.add_argument_group(f"{name} inputs"), method.inputs_cls)
        p.set_defaults(func=cmd_edit, config_fields=config_fields, input_fields=input_fields, writes_edit=True)


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


def cmd_methods(args: argparse.Namespace) -> None:
    from concept_edit.methods import available_methods, get_method

    for name in available_methods():
        m = get_method(name)
        print(f"{name:10s} modes: {', '.join(m.modes):28s} {m.summary}")


def cmd_edit(args: argparse.Namespace) -> None:
    from concept_edit.edit import applied, resolve_edit_path
    from concept_edit.methods import EditRequest, fit, get_method, make_config, make_inputs
    from concept_edit.processes import process_group

    group = process_group()  # under `accelerate launch --num_processes N`: amnesia and cad split their sums
    if group.count > 1 and args.method not in ("amnesia", "cad"):
        raise ValueError(f"{args.method} runs in one process; only amnesia and cad split work across processes")
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
    if group.count > 1 and args.device is None:  # this process's own GPU
        args.device = str(group.device)
    pipe = load_model(args, text_to_image=False)  # the registry refuses methods that cannot train digits models
    for f in dataclasses.fields(method.inputs_cls):  # text specs (a judge...) become objects for this pipeline
        parse = f.metadata.get("parse")
        if parse is not None and f.name in values:
            values[f.name] = parse(values[f.name], pipe)
    with applied(pipe, *below):
        edit = fit(pipe, args.method, request, config, make_inputs(args.method, **values), seed=args.seed)
    if not group.main:  # every process holds the same edit; the main one writes it
        return
    edit = stored_as(edit, args.store_dtype)
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
    from concept_edit.processes import process_group
    from concept_edit.training import check_checkpoint_slot, paths_overlap
    from concept_edit.validation import check_number

    names = {f.name for f in dataclasses.fields(method.inputs_cls)}
    fisher = values.get("fisher")
    if fisher is not None and paths_overlap(Path(fisher), target):
        raise ValueError(f"--fisher {fisher} is the output {target} (or holds it); give the Fisher cache its own path")
    if "checkpoint" not in names:
        return None
    if "checkpoint" not in values and process_group().count > 1:
        return None  # several processes keep no checkpoint (the methods refuse --checkpoint or --resume given)
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
