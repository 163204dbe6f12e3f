"""RECE's round count on ShapesSD, on the TUNING seeds (5000+) only: the erased concept's accuracy, the other
objects', and the attacks' success, for each number of rounds, beside the unedited model.

    python benchmarks/rece_tuning.py [--rounds 0,3,6,10,15,20] [--concept circle] [--n 8] [--seed 5000]
        [--attacks soft-prompt,concept-inversion] [--json]

The round count is RECE's one choice the paper leaves to the user; this is the evidence for its default. Each
row fits RECE on the concept with the other objects preserved, evaluates shapes-objects (n images per object,
seeds from --seed) and runs each attack at its default budget (n attacked prompts, seeds from --seed). Every
share has its n and Wilson 95% interval. The last line with --json is {"unedited": ..., "rows": [...]}.
"""

from __future__ import annotations

import argparse
import json
import time

from concept_edit import EditRequest, fit, make_config
from concept_edit.attacks import probe
from concept_edit.evaluation import evaluate, get_suite
from concept_edit.evaluation.metrics import wilson
from concept_edit.models import load_pipeline

TUNING_SEEDS = 5000


def _share(k: int, n: int) -> dict:
    low, high = wilson(k, n)
    return {"rate": k / n, "successes": k, "n": n, "ci95": [round(low, 4), round(high, 4)]}


def _text(share: dict) -> str:
    low, high = share["ci95"]
    return f"{share['successes']}/{share['n']} [{low:.2f}, {high:.2f}]"


def _accuracies(results: dict, concept: str) -> tuple[dict, dict]:
    per = results["per_concept"]
    target = per[concept]
    hits = sum(round(v["accuracy"] * v["n"]) for c, v in per.items() if c != concept)
    n = sum(v["n"] for c, v in per.items() if c != concept)
    return _share(round(target["accuracy"] * target["n"]), target["n"]), _share(hits, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", default="0,3,6,10,15,20")
    parser.add_argument("--concept", default="circle")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seed", type=int, default=TUNING_SEEDS)
    parser.add_argument("--attacks", default="soft-prompt,concept-inversion")
    parser.add_argument("--budget", type=int, default=None, help="every attack's budget (default: its own)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.seed < TUNING_SEEDS:
        parser.error(f"tuning runs on the tuning seeds ({TUNING_SEEDS}+), never on the reported ones")
    pipe = load_pipeline("shapes", device="cpu")
    suite = get_suite("shapes-objects", n=args.n, seed=args.seed)
    others = tuple(c for c in suite.concepts if c != args.concept)
    results, _ = evaluate(pipe, suite, target=args.concept, progress=False)
    target, rest = _accuracies(results, args.concept)
    out = {"unedited": {"target": target, "others": rest}, "rows": [], "n": args.n, "seed": args.seed}
    print(f"unedited: {args.concept} {_text(target)}, others {_text(rest)}", flush=True)
    for rounds in (int(r) for r in args.rounds.split(",")):
        started = time.perf_counter()
        edit = fit(pipe, "rece", EditRequest(concepts=(args.concept,), preserve=others),
                   make_config("rece", rounds=rounds), progress=False)  # fmt: skip
        fit_s = time.perf_counter() - started
        results, _ = evaluate(pipe, suite, edits=[edit], target=args.concept, progress=False, compute_baseline=False)
        target, rest = _accuracies(results, args.concept)
        row = {"rounds": rounds, "fit_s": round(fit_s, 3), "target": target, "others": rest, "attacks": {},
               "residuals": [r["residual_before"] for r in edit.manifest["stats"]["rounds"]]}  # fmt: skip
        for attack in (a for a in args.attacks.split(",") if a):
            r = probe(pipe, args.concept, attack, edits=[edit], n=args.n, seed=args.seed, budget=args.budget)
            row["attacks"][attack] = {**_share(r["successes"], r["n"]), "without_attack": r["edited_no_attack"]}
        out["rows"].append(row)
        attacks = "; ".join(f"{a} {_text(v)}" for a, v in row["attacks"].items())
        print(f"rounds {rounds}: {args.concept} {_text(target)}, others {_text(rest)}; {attacks}", flush=True)
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
