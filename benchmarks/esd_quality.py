"""ESD on ShapesSD, with UCE beside it: does the concept go, do the others stay? Judged by the oracle.

    python benchmarks/esd_quality.py [--n 16] [--seed 0] [--rows esd-x,esd-u,esd-x-style,uce-object,uce-style] [--json]

Rows (each method at its defaults; the ESD defaults were chosen on evaluation seeds 5000+, never these):
* ESD-x erasing "circle": circle accuracy and the other seven objects' mean on shapes-objects; what leaks
  through true synonyms (shapes-paraphrase: "disc", "round dot"...) and through phrases that contain the
  name (shapes-containing);
* ESD-u erasing the "striped" style: striped accuracy and the other five styles' mean on shapes-styles;
  what leaks through the style's other phrase ("on stripes", which the edit never saw), and the object
  accuracy on shapes-objects as collateral;
* ESD-x erasing "striped" too (the paper erases styles with ESD-x and keeps ESD-u for global concepts);
* UCE erasing the same two concepts, on the same suites and seeds.
Accuracies carry their n and Wilson 95% interval. Suite seeds start at --seed; training uses --train-seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from concept_edit import EditRequest, fit, make_config
from concept_edit.evaluation.evaluate import evaluate
from concept_edit.evaluation.metrics import format_share, wilson
from concept_edit.evaluation.suites import get_suite
from concept_edit.models import load_pipeline

ROWS = {
    "esd-x": ("esd", {"variant": "x"}, "circle", "objects"),
    "esd-u": ("esd", {"variant": "u"}, "striped", "styles"),
    "esd-x-style": ("esd", {"variant": "x"}, "striped", "styles"),
    "uce-object": ("uce", {}, "circle", "objects"),
    "uce-style": ("uce", {}, "striped", "styles"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=16, help="images per concept")
    parser.add_argument("--seed", type=int, default=0, help="first suite seed")
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    pipe = load_pipeline("shapes", device="cpu")
    suites = {
        "objects": get_suite("shapes-objects", args.n, args.seed),
        "styles": get_suite("shapes-styles", args.n, args.seed),
        "paraphrase": get_suite("shapes-paraphrase", args.n, args.seed),
        "containing": get_suite("shapes-containing", args.n, args.seed),
    }
    suites["stripes"] = _other_phrase(suites["styles"], "on a striped background", "on stripes")
    base = {name: evaluate(pipe, suite, progress=False) for name, suite in suites.items()}
    out = {"n": args.n, "seed": args.seed, "train_seed": args.train_seed, "rows": {}}
    for row in args.rows.split(","):
        method, options, concept, home = ROWS[row]
        started = time.perf_counter()
        edit = fit(pipe, method, EditRequest(concepts=(concept,)), make_config(method, **options),
                   seed=args.train_seed, progress=False)  # fmt: skip
        fit_s = time.perf_counter() - started
        checks = ["objects", "paraphrase", "containing"] if home == "objects" else ["styles", "stripes", "objects"]
        result = {"method": method, "options": options, "concept": concept, "fit_s": round(fit_s, 1)}
        for name in checks:
            target = concept if name in (home, "stripes") else None
            after, _ = evaluate(pipe, suites[name], edits=[edit], target=target, progress=False)
            result[name] = {"before": _summary(base[name][0], target), "after": _summary(after, target)}
        out["rows"][row] = result
        print(f"{row}: fit {fit_s:.0f} s", flush=True)
    _print(out)
    if args.json:
        print(json.dumps(out))


def _other_phrase(suite, old: str, new: str):
    """The suite's entries that use `old`, with `new` in its place: a phrasing the edit never saw."""
    entries = tuple(dataclasses.replace(e, prompt=e.prompt.replace(old, new)) for e in suite.entries if old in e.prompt)
    return dataclasses.replace(suite, name=f"{suite.name}-{new.replace(' ', '-')}", entries=entries)


def _summary(results: dict, target: str | None) -> dict:
    """Target accuracy (if any) and the others' mean, each with n; per-concept accuracies."""
    per = results["per_concept"]
    out = {"per_concept": {k: {"accuracy": v["accuracy"], "n": v["n"], "ci95": v["ci95"]} for k, v in per.items()}}
    if target is not None:
        out["target"] = out["per_concept"][target]
    others = [v for k, v in per.items() if k != target]
    hits, n = sum(round(v["accuracy"] * v["n"]) for v in others), sum(v["n"] for v in others)
    if n:  # a suite of the target alone (the "on stripes" phrasing) has no others
        out["others"] = {"accuracy": hits / n, "n": n, "ci95": list(wilson(hits, n))}
    return out


def _print(out: dict) -> None:
    print("\n| row | concept | suite | concept before | concept after | others before | others after |")
    print("|---|---|---|---|---|---|---|")
    for row, r in out["rows"].items():
        for name in [k for k in r if isinstance(r[k], dict) and "before" in r[k]]:
            b, a = r[name]["before"], r[name]["after"]
            target = (format_share(b["target"]), format_share(a["target"])) if "target" in b else ("", "")
            others = (format_share(b["others"]), format_share(a["others"])) if "others" in b else ("", "")
            print(f"| {row} | {r['concept']} | {name} | {target[0]} | {target[1]} | {others[0]} | {others[1]} |")
    for row, r in out["rows"].items():
        if "paraphrase" in r:
            leaks = {k: v["accuracy"] for k, v in r["paraphrase"]["after"]["per_concept"].items()}
            print(f"{row} synonyms after: " + ", ".join(f"{k} {v:.2f}" for k, v in leaks.items()))
    print("fit time (s): " + ", ".join(f"{row} {r['fit_s']}" for row, r in out["rows"].items()))


if __name__ == "__main__":
    main()
