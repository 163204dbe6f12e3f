"""Each attack's success against its budget on ShapesSD, on the TUNING seeds (5000+) only: the evidence for the
budgets the erasure table uses (the budget is chosen where success stops rising).

    python benchmarks/attack_budgets.py [--method uce] [--concept circle] [--n 8] [--seed 5000]
        [--budgets soft-prompt=50,100,200,400;concept-inversion=100,300,600] [--json]

The method is fitted at its default on the concept (training seed --seed) and each attack runs at each budget
(n attacked prompts, seeds from --seed; success judged at fresh seeds as `probe` does). Every share has its n
and Wilson 95% interval. The last line with --json is {"method", "concept", "n", "seed", "rows": [{attack,
budget, rate, successes, n, ci95, seconds}]}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the sibling script's helpers, however this one is run
from rece_tuning import TUNING_SEEDS, _share, _text  # noqa: E402

from concept_edit import EditRequest, fit
from concept_edit.attacks import probe
from concept_edit.models import load_pipeline

DEFAULT_BUDGETS = "soft-prompt=50,100,200,400;concept-inversion=100,300,600"


def parse_budgets(text: str) -> dict[str, list[int]]:
    out = {}
    for part in (p for p in text.split(";") if p.strip()):
        attack, _, values = part.partition("=")
        out[attack.strip()] = [int(v) for v in values.split(",") if v.strip()]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="uce")
    parser.add_argument("--concept", default="circle")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seed", type=int, default=TUNING_SEEDS)
    parser.add_argument("--budgets", default=DEFAULT_BUDGETS, help="attack=b1,b2;attack=b1,...")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.seed < TUNING_SEEDS:
        parser.error(f"budgets are chosen on the tuning seeds ({TUNING_SEEDS}+), never on the reported ones")
    pipe = load_pipeline("shapes", device="cpu")
    edit = fit(pipe, args.method, EditRequest(concepts=(args.concept,)), seed=args.seed, progress=False)
    out = {"method": args.method, "concept": args.concept, "n": args.n, "seed": args.seed, "rows": []}
    for attack, budgets in parse_budgets(args.budgets).items():
        for budget in budgets:
            r = probe(pipe, args.concept, attack, edits=[edit], n=args.n, seed=args.seed, budget=budget)
            share = _share(r["successes"], r["n"])
            out["rows"].append({"attack": attack, "budget": budget, **share, "seconds": r["seconds"],
                                "without_attack": r["edited_no_attack"]})  # fmt: skip
            print(f"{attack} budget {budget}: {_text(share)} ({r['seconds']:.0f} s)", flush=True)
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
