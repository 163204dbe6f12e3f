"""CLI verbs for measuring: `evaluate`, `report`, `demo`."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_verbs(verbs) -> None:
    from concept_edit.cli_support import add_model_args

    ev = verbs.add_parser("evaluate", help="run an evaluation suite and write a results JSON")
    add_model_args(ev)
    ev.add_argument("--edit", action="append", help="edit file or folder to apply (repeat to compose)")
    ev.add_argument("--suite", required=True, help="a built-in suite (shapes-objects, ...) or a prompt-list file")
    ev.add_argument("--n", type=int, default=None, help="images per concept (default: the suite's)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--target", default=None, help="report this concept's accuracy against the others' mean")
    ev.add_argument(
        "--no-baseline",
        action="store_true",
        help="with --edit: skip generating the unedited images (no image change / Frechet to unedited)",
    )
    ev.add_argument("--steps", type=int, default=None)
    ev.add_argument("--guidance", type=float, default=None)
    ev.add_argument("--out", required=True, help="results .json file")
    ev.set_defaults(func=cmd_evaluate)

    rep = verbs.add_parser("report", help="write a self-contained HTML report from results files")
    rep.add_argument("results", nargs="+", help="results .json files")
    rep.add_argument("--out", required=True, help="report .html file")
    rep.set_defaults(func=cmd_report)

    demo = verbs.add_parser("demo", help="erase 'circle' from ShapesSD with UCE and report before/after")
    demo.add_argument("--out", required=True, help="output folder")
    demo.add_argument("--n", type=int, default=16, help="images per concept")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from concept_edit.cli_support import check_out_file, load_edits, load_model
    from concept_edit.evaluation.evaluate import evaluate
    from concept_edit.evaluation.report import summary_table
    from concept_edit.evaluation.suites import get_suite
    from concept_edit.io import write_json

    out = check_out_file(args.out, ".json")
    suite = get_suite(args.suite, args.n, args.seed)
    if args.target is not None and args.target not in suite.concepts:
        raise ValueError(f"target {args.target!r} is not a concept of {suite.name}: {', '.join(suite.concepts)}")
    edits = load_edits(args.edit)
    pipe = load_model(args)
    results, _ = evaluate(
        pipe,
        suite,
        edits=edits,
        target=args.target,
        compute_baseline=not args.no_baseline,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
    )
    write_json(out, results)
    print(summary_table([results]))
    print(f"wrote {out}")


def cmd_report(args: argparse.Namespace) -> None:
    from concept_edit.cli_support import check_out_file
    from concept_edit.evaluation.report import write_report

    check_out_file(args.out, ".html")
    print(f"wrote {write_report(args.results, args.out)}")


def cmd_demo(args: argparse.Namespace) -> None:
    from concept_edit.demo import run_demo

    run_demo(Path(args.out), n=args.n, seed=args.seed)
