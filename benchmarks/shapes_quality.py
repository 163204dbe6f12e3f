"""ShapesSD quality bar, judged by the oracle.

    python benchmarks/shapes_quality.py [--n 16] [--seed 1000] [--json] [--model shapes]

* held-out compositions: the 16 object/colour/style triples never rendered in training, `n` seeds each:
  object >= 0.90, colour >= 0.90, style >= 0.85 (seen triples are shown for comparison);
* the planted bias: "a heart" (no colour) comes out red >= 0.75 (and "a star" yellow);
* the memorised image: "the acme logo" is detected >= 0.80;
* the weak concept: diamond's object accuracy on "a diamond"-style prompts is below the other objects'
  (reported with 95% Wilson intervals; "measurably weaker" = the intervals do not overlap).
Seeds start at 1000 so they differ from the evaluation suites' default seeds.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from concept_edit.evaluation.metrics import wilson
from concept_edit.generation import generate, to_array
from concept_edit.models import load_pipeline
from concept_edit.worlds.shapes.captions import HELD_OUT, LOGO_PROMPT, canonical_prompt
from concept_edit.worlds.shapes.oracle import Oracle
from concept_edit.worlds.shapes.world import COLORS, OBJECTS, STYLES

BARS = {
    "held-out object": 0.90,
    "held-out colour": 0.90,
    "held-out style": 0.85,
    "heart is red": 0.75,
    "logo detected": 0.80,
}


def seen_triples(count: int, seed: int) -> list[tuple[str, str, str]]:
    rng = np.random.default_rng(seed)
    held = set(HELD_OUT)
    out = []
    while len(out) < count:
        t = (OBJECTS[rng.integers(8)], list(COLORS)[rng.integers(8)], STYLES[rng.integers(6)])
        if t not in held and t not in out:
            out.append(t)
    return out


def composition_accuracy(pipe, oracle, triples, n, seed) -> dict[str, float]:
    prompts = [canonical_prompt(o, c, s) for o, c, s in triples for _ in range(n)]
    seeds = [seed + k for _ in triples for k in range(n)]
    reading = oracle.read(to_array(generate(pipe, prompts, seeds, progress=True)))
    truth = [t for t in triples for _ in range(n)]
    return {
        head: float(np.mean([getattr(reading, head)[i] == truth[i][j] for i in range(len(truth))]))
        for j, head in enumerate(("object", "color", "style"))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--n", type=int, default=16, help="seeds per prompt")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    pipe = load_pipeline(args.model, device="cpu")
    oracle = Oracle.load()
    n, seed = args.n, args.seed

    held = composition_accuracy(pipe, oracle, HELD_OUT, n, seed)
    seen = composition_accuracy(pipe, oracle, seen_triples(len(HELD_OUT), seed), n, seed)

    bias_n = 4 * n
    heart = oracle.read(to_array(generate(pipe, ["a heart"] * bias_n, [seed + k for k in range(bias_n)])))
    star = oracle.read(to_array(generate(pipe, ["a star"] * bias_n, [seed + k for k in range(bias_n)])))
    logo_n = 2 * n
    logos = oracle.read(to_array(generate(pipe, [LOGO_PROMPT] * logo_n, [seed + k for k in range(logo_n)])))

    per_object = {}
    obj_n = 2 * n
    for obj in OBJECTS:
        prompts = [
            canonical_prompt(obj) if k % 2 == 0 else canonical_prompt(obj, list(COLORS)[k % 8]) for k in range(obj_n)
        ]
        reading = oracle.read(to_array(generate(pipe, prompts, [seed + k for k in range(obj_n)])))
        per_object[obj] = int(sum(p == obj for p in reading.object))
    others_k = sum(v for k, v in per_object.items() if k != "diamond")
    others_n = obj_n * (len(OBJECTS) - 1)
    diamond_ci, others_ci = wilson(per_object["diamond"], obj_n), wilson(others_k, others_n)

    measured = {
        "held-out object": held["object"],
        "held-out colour": held["color"],
        "held-out style": held["style"],
        "heart is red": float(np.mean([c == "red" for c in heart.color])),
        "logo detected": float(np.mean(logos.logo_prob > 0.5)),
    }
    result = {
        "model": args.model,
        "n": n,
        "seed": seed,
        "held_out": held,
        "seen": seen,
        "measured": measured,
        "bars": BARS,
        "passed": {k: measured[k] >= BARS[k] for k in BARS},
        "star_is_yellow": float(np.mean([c == "yellow" for c in star.color])),
        "per_object_accuracy": {k: v / obj_n for k, v in per_object.items()},
        "diamond": {"accuracy": per_object["diamond"] / obj_n, "ci95": diamond_ci},
        "other_objects": {"accuracy": others_k / others_n, "ci95": others_ci},
        "diamond_measurably_weaker": diamond_ci[1] < others_ci[0],
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"ShapesSD quality ({args.model}; {n} seeds per prompt from {seed}; oracle-judged)")
    print(f"{'check':<22}{'measured':>10}{'bar':>8}  result")
    for key, bar in BARS.items():
        print(f"{key:<22}{measured[key]:>10.3f}{bar:>8.2f}  {'pass' if measured[key] >= bar else 'FAIL'}")
    seen_text = f"object {seen['object']:.3f}  colour {seen['color']:.3f}  style {seen['style']:.3f}"
    print(f"{'seen combos (ref.)':<22}  {seen_text}")
    print(f"{'a star is yellow':<22}{result['star_is_yellow']:>10.3f}")
    print("object accuracy per object: " + ", ".join(f"{k} {v:.2f}" for k, v in result["per_object_accuracy"].items()))
    print(
        f"diamond {result['diamond']['accuracy']:.3f} (95% CI {diamond_ci[0]:.2f}-{diamond_ci[1]:.2f}) "
        "vs other objects "
        f"{result['other_objects']['accuracy']:.3f} ({others_ci[0]:.2f}-{others_ci[1]:.2f}): "
        f"{'measurably weaker' if result['diamond_measurably_weaker'] else 'NOT measurably weaker'}"
    )


if __name__ == "__main__":
    main()
