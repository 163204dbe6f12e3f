"""CLI verbs for measuring: `evaluate`, `report`, `demo`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_verbs(verbs, add_model_args) -> None:
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


def _check_out_file(out: str, suffix: str) -> Path:
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; give a {suffix} file name")
    if path.suffix.lower() != suffix:
        raise ValueError(f"--out must be a {suffix} file, got {path}")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"cannot write {path}: {parent} is a file")
    return path


def cmd_evaluate(args: argparse.Namespace) -> None:
    from concept_edit.cli import _load, _load_edits
    from concept_edit.evaluation.evaluate import evaluate
    from concept_edit.evaluation.suites import get_suite
    from concept_edit.io import write_json

    out = _check_out_file(args.out, ".json")
    suite = get_suite(args.suite, args.n, args.seed)
    if args.target is not None and args.target not in suite.concepts:
        raise ValueError(f"target {args.target!r} is not a concept of {suite.name}: {', '.join(suite.concepts)}")
    edits = _load_edits(args.edit)
    pipe = _load(args)
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
    from concept_edit.evaluation.report import write_report

    _check_out_file(args.out, ".html")
    print(f"wrote {write_report(args.results, args.out)}")


def cmd_demo(args: argparse.Namespace) -> None:
    from concept_edit.demo import run_demo

    run_demo(Path(args.out), n=args.n, seed=args.seed)


def summary_table(runs: list[dict]) -> str:
    """Per-concept accuracy, one column per run, then the headline metrics."""
    from concept_edit.evaluation.report import run_label

    labels = [run_label(r) for r in runs]
    concepts = list(dict.fromkeys(c for r in runs for c in r["per_concept"]))
    width = max(18, *(len(c) for c in concepts))
    col = max(10, *(min(len(label), 28) for label in labels))
    lines = [f"{'concept':<{width}}  " + "  ".join(f"{label[:28]:>{col}}" for label in labels)]
    for c in concepts:
        cells = [
            f"{r['per_concept'][c]['accuracy']:>{col}.2f}" if c in r["per_concept"] else f"{'-':>{col}}" for r in runs
        ]
        lines.append(f"{c:<{width}}  " + "  ".join(cells))
    rows = [
        ("mean accuracy", "mean_accuracy"),
        ("target accuracy", "target_accuracy"),
        ("others accuracy", "others_accuracy"),
        ("Frechet to renders", "frechet_to_renders"),
        ("mean deviation", "mean_deviation"),
    ]
    for name, key in rows:
        if any(key in r for r in runs):
            cells = [f"{r[key]:>{col}.3f}" if key in r else f"{'-':>{col}}" for r in runs]
            lines.append(f"{name:<{width}}  " + "  ".join(cells))
    for c in dict.fromkeys(c for r in runs for c in r.get("deviation", {})):  # bias suite: each concept's delta
        cells = [f"{r['deviation'][c]:>{col}.3f}" if c in r.get("deviation", {}) else f"{'-':>{col}}" for r in runs]
        lines.append(f"{'deviation ' + c:<{width}}  " + "  ".join(cells))
    if any("image_change" in r for r in runs):
        metric = next(r["image_change"]["metric"] for r in runs if "image_change" in r)
        cells = [f"{r['image_change']['mean']:>{col}.3f}" if "image_change" in r else f"{'-':>{col}}" for r in runs]
        lines.append(f"{'image change':<{width}}  " + "  ".join(cells) + f"   ({metric})")
    return "\n".join(lines)


def load_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))
