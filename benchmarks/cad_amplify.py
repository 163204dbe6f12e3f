"""CAD-Amplify "diamond" on ShapesSD with enough images to see a change of a few points.

    python benchmarks/cad_amplify.py [--n 64] [--seed 0] [--ratios 0.001,0.01,0.1] [--json]

`cad_quality.py` reads diamond on 16 images per setting, too few to resolve the paper's +15 to +30 points
from noise; this script generates only the diamond prompts of shapes-objects (n of them, seeds from
--seed), before and after CAD-Amplify (ff, scores of eq. 5 on 5 true renders, `shapes:diamond`), and
reports the accuracy with its Wilson 95% interval.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from concept_edit import EditRequest, fit, make_config, make_inputs
from concept_edit.evaluation.evaluate import evaluate
from concept_edit.evaluation.metrics import format_share, wilson
from concept_edit.evaluation.suites import get_suite
from concept_edit.models import load_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--ratios", default="0.001,0.01,0.1")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    pipe = load_pipeline("shapes", device="cpu")
    suite = get_suite("shapes-objects", args.n, args.seed)
    suite = dataclasses.replace(suite, entries=tuple(e for e in suite.entries if e.label == "diamond"))
    before, _ = evaluate(pipe, suite, progress=False)
    out = {"n": args.n, "seed": args.seed, "before": _share(before), "after": {}}
    inputs = make_inputs("cad", images="shapes:diamond")
    for ratio in [float(r) for r in args.ratios.split(",")]:
        edit = fit(pipe, "cad", EditRequest(concepts=("diamond",), mode="amplify"),
                   make_config("cad", ablate_ratio=ratio), inputs, seed=args.train_seed, progress=False)  # fmt: skip
        after, _ = evaluate(pipe, suite, edits=[edit], compute_baseline=False, progress=False)
        out["after"][str(ratio)] = _share(after)
    print(f"| setting | diamond (n={args.n}) |\n|---|---|\n| unedited | {format_share(out['before'])} |")
    for ratio, share in out["after"].items():
        print(f"| CAD-Amplify ff, ratio {ratio} | {format_share(share)} |")
    if args.json:
        print(json.dumps(out))


def _share(results: dict) -> dict:
    entry = results["per_concept"]["diamond"]
    hits = round(entry["accuracy"] * entry["n"])
    return {"accuracy": entry["accuracy"], "n": entry["n"], "ci95": list(wilson(hits, entry["n"]))}


if __name__ == "__main__":
    main()
