"""CLI verbs of concept attribution: `attribute` (save the scores) and `cad-check` (the approximation check)."""

from __future__ import annotations

import argparse

# the CAD options that decide the scores (the others decide what an edit prunes from them)
ATTRIBUTION_OPTIONS = ("modules", "samples", "steps", "timesteps", "guidance", "batch_size")


def add_verbs(verbs) -> None:
    from concept_edit.cli.flags import dataclass_flags
    from concept_edit.cli.support import add_edit_args, add_force, add_model_args, number, seed_type
    from concept_edit.methods import get_method

    for name, helptext in (
        ("attribute", "CAD scores w * dJ/dw of a concept for every weight of the chosen modules, to a file"),
        ("cad-check", "CAD's approximation check: predicted vs actual change of J for random ablations"),
    ):
        p = verbs.add_parser(name, help=helptext, description=helptext)
        add_model_args(p)
        add_edit_args(p)
        p.add_argument("--concept", required=True, help="the concept to attribute")
        p.add_argument("--mode", choices=("erase", "amplify"), default="erase", help="objective: eq. 4 or eq. 5")
        p.add_argument("--guide", default=None, help="erase: the base prompt c_base (default: '')")
        p.add_argument("--images", help="amplify: a folder of images of the concept, or shapes:OBJECT[:N]")
        dataclass_flags(p.add_argument_group("attribution options (as `edit cad`)"), get_method("cad").config_cls,
                        only=ATTRIBUTION_OPTIONS)  # fmt: skip
        p.add_argument("--seed", type=seed_type(), default=0)
        if name == "attribute":
            p.add_argument("--out", required=True, help="scores .safetensors file")
            p.set_defaults(func=cmd_attribute)
        else:
            p.add_argument("--subsets", type=number("--subsets", low=3, integer=True), default=200,
                           help="random subsets ablated (default: 200; paper: 1000)")  # fmt: skip
            p.add_argument("--fraction", type=number("--fraction", low=0, high=1, low_open=True), default=0.001,
                           help="share of the attributed entries in each subset (default: 0.001)")  # fmt: skip
            p.add_argument("--out", required=True, help="scatter plot .png (a .json with the points goes beside it)")
            p.set_defaults(func=cmd_check)
        add_force(p)


def _prepare(args: argparse.Namespace, suffix: str, extra_outputs=()):
    """Check the output and every option before loading the model; the caller applies the edits."""
    from concept_edit.cli.support import check_output, edit_inputs, load_edits, load_model
    from concept_edit.methods import EditRequest, make_config
    from concept_edit.methods.cad.fit import CADInputs

    out = check_output(args.out, force=args.force, suffix=suffix, inputs=edit_inputs(args.edit))
    for extra in extra_outputs:
        check_output(out.with_suffix(extra), force=args.force, inputs=edit_inputs(args.edit))
    request = EditRequest(concepts=(args.concept,), mode=args.mode, guide=args.guide)
    options = {k: tuple(v) if isinstance(v, list) else v for k in ATTRIBUTION_OPTIONS if (v := getattr(args, k, None))
               is not None}  # fmt: skip
    config = make_config("cad", **options)
    if args.mode == "amplify" and not args.images:
        raise ValueError("amplify needs images of the concept: --images FOLDER (or shapes:OBJECT on ShapesSD)")
    edits = load_edits(args.edit)
    if args.device is None:  # under `accelerate launch --num_processes N`: this process's own GPU
        from concept_edit.processes import process_device

        device = process_device()
        args.device = None if device is None else str(device)
    pipe = load_model(args)
    images = None
    if args.images:
        from concept_edit.methods.cad.images import resolve_images
        from concept_edit.models.loading import model_info

        images = resolve_images(args.images, model_info(pipe).resolution)
    return out, pipe, edits, request, config, CADInputs(images=images)


def cmd_attribute(args: argparse.Namespace) -> None:
    from concept_edit.edit import applied
    from concept_edit.methods.cad.fit import attribute, save_scores
    from concept_edit.processes import process_group

    out, pipe, edits, request, config, inputs = _prepare(args, ".safetensors")
    with applied(pipe, *edits):
        result = attribute(pipe, request, config, inputs, seed=args.seed)  # split across processes, if launched so
        if not process_group().main:  # every process holds the same scores; the main one writes them
            return
        save_scores(out, result, request, config, args.seed, pipe)
    print(f"wrote {out}: scores of {len(result.scores)} weights from {len(result.samples)} samples (x_t, t)")
    print(summary_table(result.scores))


def summary_table(scores: dict) -> str:
    """Where the positive and the negative mass sits, by module group and UNet part."""
    rows: dict[tuple[str, str], list[float]] = {}
    for name, s in scores.items():
        part = name.split(".")[1]  # down_blocks / mid_block / up_blocks
        group = _group_of(name)
        acc = rows.setdefault((group, part), [0.0, 0.0, 0])
        acc[0] += float(s.clamp(min=0).sum())
        acc[1] += float(s.clamp(max=0).sum())
        acc[2] += s.numel()
    pos_total = sum(v[0] for v in rows.values()) or 1.0
    neg_total = sum(-v[1] for v in rows.values()) or 1.0
    lines = ["| group | part | weights | positive mass | share | negative mass | share |", "|---" * 7 + "|"]
    for (group, part), (pos, neg, count) in sorted(rows.items()):
        lines.append(f"| {group} | {part} | {count} | {pos:.4g} | {pos / pos_total:.1%} | {neg:.4g} | "
                     f"{-neg / neg_total:.1%} |")  # fmt: skip
    return "\n".join(lines)


def _group_of(name: str) -> str:
    if ".ff." in name:
        return "ff"
    if ".attn1." in name:
        return "attn1"
    if ".attn2." in name:
        return "attn2"
    if ".resnets." in name:
        return "residual"
    return "other"


def cmd_check(args: argparse.Namespace) -> None:
    from concept_edit.edit import applied
    from concept_edit.io import write_json
    from concept_edit.methods.cad.check import approximation_check, scatter_plot
    from concept_edit.methods.cad.fit import attribute
    from concept_edit.processes import process_group

    out, pipe, edits, request, config, inputs = _prepare(args, ".png", extra_outputs=(".json",))
    with applied(pipe, *edits):
        result = attribute(pipe, request, config, inputs, seed=args.seed)  # split across processes, if launched so
        if not process_group().main:  # the check itself runs in one process
            return
        check = approximation_check(pipe, result, subsets=args.subsets, fraction=args.fraction, seed=args.seed,
                                    progress=True)  # fmt: skip
    scatter_plot(check, out, f"CAD {args.mode} '{args.concept}' ({', '.join(config.modules)})")
    write_json(out.with_suffix(".json"), {"concept": args.concept, "mode": args.mode, "modules": list(config.modules),
                                          "seed": args.seed, **check.to_dict()})  # fmt: skip
    print(f"Pearson r = {check.pearson:.4f} over {args.subsets} subsets of {check.subset_size} entries")
    print(f"wrote {out} and {out.with_suffix('.json')}")
