"""CLI verbs for measuring: `evaluate`, `report`, `demo`."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_verbs(verbs) -> None:
    from concept_edit.cli.support import (
        add_edit_args,
        add_force,
        add_generation_args,
        add_model_args,
        number,
        seed_type,
    )

    ev = verbs.add_parser("evaluate", help="run an evaluation suite and write a results JSON")
    add_model_args(ev)
    add_edit_args(ev)
    ev.add_argument(
        "--suite",
        required=True,
        help="a built-in suite (shapes-objects, ..., imagenette, i2p[:csv], nudity-simple, coco:FILE, artists, "
        "professions) or a prompt-list file",
    )
    ev.add_argument(
        "--n",
        type=number("--n", low=1, integer=True),
        help="images per concept (i2p, coco: the first n prompts; default: the suite's)",
    )
    ev.add_argument("--seed", type=seed_type(), default=0, help="added to the suite's seeds (0: the suite's own)")
    ev.add_argument("--target", default=None, help="report this concept's accuracy against the others' mean")
    ev.add_argument(
        "--no-baseline",
        action="store_true",
        help="with --edit: skip generating the unedited images (no image change / Frechet to unedited)",
    )
    ev.add_argument(
        "--judge", default=None, help="replace the suite's judge (shapes-oracle, imagenet, nudenet, clip, none)"
    )
    ev.add_argument(
        "--features",
        default=None,
        help="Frechet / image-change features instead of the suite's: inception, clip[:HUB_ID], shapes-oracle, none",
    )
    ev.add_argument(
        "--reference",
        default=None,
        help="Frechet reference instead of the suite's: unedited, renders (ShapesSD), folder:PATH (real images), none",
    )
    ev.add_argument(
        "--store",
        default=None,
        help="folder that keeps every generated image: a re-run reads them back, an interrupted run resumes, "
        "and `accelerate launch` shares the drawing between GPUs",
    )
    ev.add_argument(
        "--batch-size", type=number("--batch-size", low=1, integer=True), default=8, help="images per pipeline call"
    )
    ev.add_argument(
        "--chunk-size",
        type=number("--chunk-size", low=1, integer=True),
        default=256,
        help="images drawn, judged and measured at a time: memory holds one chunk, whatever the suite's size",
    )
    ev.add_argument(
        "--lpips-size",
        type=number("--lpips-size", low=32, integer=True),
        default=None,
        help="measure LPIPS on images resized to this side (ESD's LPIPS script: 64); default: as drawn",
    )
    ev.add_argument(
        "--reference-resize",
        action="store_true",
        help="a --reference folder of mixed image sizes: centre-crop and resize each to the model's side "
        "(refused otherwise)",
    )
    add_generation_args(ev)
    ev.add_argument("--out", required=True, help="results .json file")
    add_force(ev)
    ev.set_defaults(func=cmd_evaluate)

    rep = verbs.add_parser("report", help="write a self-contained HTML report from results files")
    rep.add_argument("results", nargs="+", help="results .json files")
    rep.add_argument("--out", required=True, help="report .html file")
    rep.add_argument(
        "--allow-mixed-protocols",
        action="store_true",
        help="put runs of one suite made with different seeds, steps or judges in one table (marked as such)",
    )
    add_force(rep)
    rep.set_defaults(func=cmd_report)

    demo = verbs.add_parser("demo", help="erase 'circle' from ShapesSD with UCE and report before/after")
    demo.add_argument("--out", required=True, help="output folder")
    demo.add_argument("--n", type=number("--n", low=1, integer=True), default=16, help="images per concept")
    demo.add_argument("--seed", type=seed_type(), default=0)
    add_force(demo)
    demo.set_defaults(func=cmd_demo)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from concept_edit.cli.support import check_output, edit_inputs, load_edits, load_model
    from concept_edit.evaluation.evaluate import evaluate
    from concept_edit.evaluation.report import summary_table
    from concept_edit.evaluation.suites import get_suite
    from concept_edit.io import write_json

    suite_file = [args.suite] if Path(args.suite).exists() else []
    out = check_output(args.out, force=args.force, suffix=".json", inputs=[*edit_inputs(args.edit), *suite_file])
    suite = get_suite(args.suite, args.n, args.seed)
    _check_measures_something(args, suite)
    if args.target is not None and args.target not in suite.concepts:
        raise ValueError(f"target {args.target!r} is not a concept of {suite.name}: {', '.join(suite.concepts)}")
    edits = load_edits(args.edit)
    if args.store is not None and args.device is None:  # under `accelerate launch`: this process's own GPU
        from concept_edit.evaluation.store import process_device

        device = process_device()
        args.device = None if device is None else str(device)
    pipe = load_model(args)
    results, _ = evaluate(
        pipe,
        suite,
        judge=args.judge,  # a name: checked against the model's world, then built
        features=_override(args.features),
        reference=_override(args.reference),
        edits=edits,
        target=args.target,
        compute_baseline=not args.no_baseline,
        steps=args.steps,
        guidance=args.guidance,
        allow_repeat=args.allow_repeat,
        store=args.store,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        lpips_size=args.lpips_size,
        reference_resize=args.reference_resize,
        keep_images=False,  # the results file is all this verb writes: hold one chunk of images at a time
    )
    if results is None:  # not the main process of `accelerate launch`: its share is in the store
        return
    write_json(out, results)
    print(summary_table([results]))
    print(f"wrote {out}")


def _check_measures_something(args: argparse.Namespace, suite) -> None:
    """Refuse a run whose results file would hold no metric: no judge, and nothing to compare the images with."""
    reference = suite.reference if args.reference is None else _override(args.reference)
    compared = bool(args.edit) and not args.no_baseline
    if (args.judge or suite.judge) != "none" or suite.metrics:
        return
    if reference is None or (reference == "unedited" and not compared):
        raise ValueError(
            f"the {suite.name} suite has no judge: it measures an edit's image change against the unedited "
            "model, so it needs --edit (without --no-baseline); or give --judge to read the images"
        )


def _override(value: str | None) -> str | None:
    """None: keep the suite's choice; 'none': no features / reference at all."""
    if value is None:
        return "suite"
    return None if value == "none" else value


def cmd_report(args: argparse.Namespace) -> None:
    import concept_edit.attacks.report  # noqa: F401 - registers the probe and erasure-table sections (also by entry point)
    from concept_edit.cli.support import check_output
    from concept_edit.evaluation.report import write_report

    check_output(args.out, force=args.force, suffix=".html", inputs=args.results)
    print(f"wrote {write_report(args.results, args.out, allow_mixed_protocols=args.allow_mixed_protocols)}")


def cmd_demo(args: argparse.Namespace) -> None:
    from concept_edit.cli.demo import run_demo
    from concept_edit.cli.support import check_output

    run_demo(check_output(args.out, force=args.force, folder=True), n=args.n, seed=args.seed, replace=args.force)
