"""One table for every erasure method on ShapesSD, with the attacks that try to bring the concept back.

    python benchmarks/erasure_table.py [--concepts circle,striped,"the acme logo"] [--methods uce,esd-x,...]
        [--n 16] [--seed 0] [--train-seed 0] [--attacks paraphrase,soft-prompt,ring-a-bell] [--quick] [--json]

Every registered method that erases (`concept-edit methods`; ESD as its two variants ESD-x and ESD-u) is
fitted at its documented default to each concept: an object ("circle"), a style ("striped") and the
memorised "the acme logo". One row per (method, concept):
* target accuracy (the concept's suite: shapes-objects, shapes-styles or shapes-logo) and the others' mean
  accuracy on the same suite (other objects, other styles, the logo suite's object controls), with n and
  Wilson 95% intervals;
* for an object, what leaks through its true synonyms (shapes-paraphrase) and through phrases that contain
  its name (shapes-containing);
* the Frechet distance of oracle features to true renders and to the unedited model's images, and the image
  change against the unedited model (LPIPS if installed, else oracle-feature cosine distance);
* each attack's success rate (`concept_edit.attacks.probe` at its default budget; n attack images);
* fit time and edit-file size.
Suite seeds start at --seed, attacks use --seed too, fitting uses --train-seed. The full table takes hours
on a 2-core CPU (ESD, Selective Amnesia and the soft-prompt attack dominate); `--quick` runs a tiny setting
(UCE and eigen on "circle", 2 images per concept, minimal attack budgets) to check the script end to end.
The last line with --json is {"rows": [{"method", "concept", "target_accuracy", "others_accuracy",
"attack_success": {attack: rate}, ...}]}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from concept_edit import EditRequest, fit, make_config
from concept_edit.attacks import ATTACKS, RingABellOptions, SoftPromptOptions, probe
from concept_edit.attacks.common import oracle_head
from concept_edit.evaluation.evaluate import evaluate
from concept_edit.evaluation.metrics import format_share, wilson
from concept_edit.evaluation.suites import get_suite
from concept_edit.methods import available_methods, get_method
from concept_edit.models import load_pipeline

CONCEPTS = ("circle", "striped", "the acme logo")
QUICK = {
    "methods": "uce,eigen",
    "concepts": "circle",
    "n": 2,
    "budgets": {"paraphrase": 2, "soft-prompt": 2, "ring-a-bell": 2},
    "options": {
        "soft-prompt": SoftPromptOptions(eval_every=1, timesteps=4),
        "ring-a-bell": RingABellOptions(population=8, searches=1),
    },
}


def erasure_rows() -> dict[str, tuple[str, dict]]:
    """Row name -> (method, config options): every registered method with an erase mode, ESD as -x and -u."""
    rows = {}
    for name in available_methods():
        if "erase" not in get_method(name).modes:
            continue
        if name == "esd":
            rows["esd-x"], rows["esd-u"] = ("esd", {"variant": "x"}), ("esd", {"variant": "u"})
        else:
            rows[name] = (name, {})
    return rows


def _share(per_concept: dict, concepts) -> dict | None:
    concepts = [c for c in concepts if c in per_concept]
    if not concepts:
        return None
    hits = sum(round(per_concept[c]["accuracy"] * per_concept[c]["n"]) for c in concepts)
    n = sum(per_concept[c]["n"] for c in concepts)
    low, high = wilson(hits, n)
    return {"accuracy": hits / n, "n": n, "ci95": [round(low, 4), round(high, 4)]}


def _home(concept: str) -> tuple[str, str]:
    """(suite, label) where the concept's own accuracy is measured."""
    head, label = oracle_head(concept)
    return {"object": "shapes-objects", "style": "shapes-styles", "color": "shapes-colors"}.get(
        head, "shapes-logo"
    ), label


def _size(edit) -> int:
    with tempfile.TemporaryDirectory() as folder:
        return edit.save(Path(folder) / "edit").stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=None, help="comma-separated rows (default: every erasure method)")
    parser.add_argument("--concepts", default=",".join(CONCEPTS))
    parser.add_argument("--n", type=int, default=16, help="images per concept, and attack images per attack")
    parser.add_argument("--seed", type=int, default=0, help="first suite seed; the attacks' seed")
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--quick", action="store_true", help="tiny setting: UCE and eigen on circle, n 2")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    budgets, options = {}, {}
    if args.quick:
        args.methods = args.methods or QUICK["methods"]
        args.concepts, args.n = QUICK["concepts"], QUICK["n"]
        budgets, options = QUICK["budgets"], QUICK["options"]
    known = erasure_rows()
    methods = args.methods.split(",") if args.methods else list(known)
    unknown = [m for m in methods if m not in known]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(known)}")
    attacks = [a for a in args.attacks.split(",") if a]
    concepts = [c.strip() for c in args.concepts.split(",") if c.strip()]

    pipe = load_pipeline("shapes", device="cpu")
    suites, baselines = {}, {}
    for name in {_home(c)[0] for c in concepts} | ({"shapes-paraphrase", "shapes-containing"}):
        suites[name] = get_suite(name, args.n, args.seed)
        baselines[name] = evaluate(pipe, suites[name], progress=False)
    rows = []
    for concept in concepts:
        home, label = _home(concept)
        for row in methods:
            method, config = known[row]
            started = time.perf_counter()
            edit = fit(pipe, method, EditRequest(concepts=(concept,)), make_config(method, **config),
                       seed=args.train_seed, progress=False)  # fmt: skip
            fit_s = time.perf_counter() - started
            after, _ = evaluate(pipe, suites[home], edits=[edit], target=label, baseline_images=baselines[home][1],
                                progress=False)  # fmt: skip
            per, before = after["per_concept"], baselines[home][0]["per_concept"]
            others = [c for c in per if c != label]
            result = {
                "method": row,
                "config": config,
                "concept": concept,
                "suite": home,
                "target_accuracy": after["target_accuracy"],
                "others_accuracy": after["others_accuracy"],
                "target": _share(per, [label]),
                "others": _share(per, others),
                "target_before": _share(before, [label]),
                "others_before": _share(before, others),
                "frechet_to_renders": after.get("frechet_to_renders"),
                "frechet_to_unedited": after.get("frechet_to_unedited"),
                "image_change": after.get("image_change"),
                "fit_s": round(fit_s, 1),
                "edit_bytes": _size(edit),
            }
            if home == "shapes-objects":
                for name in ("shapes-paraphrase", "shapes-containing"):
                    if label in baselines[name][0]["per_concept"]:
                        leak, _ = evaluate(pipe, suites[name], edits=[edit], compute_baseline=False, progress=False)
                        result[name.removeprefix("shapes-")] = _share(leak["per_concept"], [label])
            result["attack_success"], result["attacks"] = {}, {}
            for attack in attacks:
                probed = probe(pipe, concept, attack, edits=[edit], budget=budgets.get(attack), n=args.n,
                               seed=args.seed, options=options.get(attack))  # fmt: skip
                result["attack_success"][attack] = probed["attack_success_rate"]
                result["attacks"][attack] = {
                    "rate": probed["attack_success_rate"],
                    "n": probed["n"],
                    "ci95": probed["ci95"],
                    "edited_no_attack": probed["edited_no_attack"]["rate"],
                    "protocol": probed["protocol"],
                    "seconds": probed["seconds"],
                }
            rows.append(result)
            print(f"{row} / {concept}: fit {fit_s:.0f} s, target {result['target_accuracy']:.2f}", flush=True)
    _print(rows, attacks)
    if args.json:
        print(json.dumps({"n": args.n, "seed": args.seed, "train_seed": args.train_seed, "rows": rows}))


def _print(rows: list[dict], attacks: list[str]) -> None:
    head = ["method", "concept", "target after (before)", "others after (before)", "synonyms", "containing",
            "Frechet to renders", "image change", *[f"{a} success" for a in attacks], "fit s", "edit KB"]  # fmt: skip
    print("\n| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [
            r["method"],
            r["concept"],
            f"{format_share(r['target'], n=False)} ({r['target_before']['accuracy']:.2f})",
            f"{format_share(r['others'], n=False)} ({r['others_before']['accuracy']:.2f})" if r["others"] else "",
            format_share(r["paraphrase"], interval=False) if r.get("paraphrase") else "",
            format_share(r["containing"], interval=False) if r.get("containing") else "",
            f"{r['frechet_to_renders']:.1f}" if r.get("frechet_to_renders") is not None else "",
            f"{r['image_change']['mean']:.3f}" if r.get("image_change") else "",
            *[f"{r['attacks'][a]['rate']:.2f} (n={r['attacks'][a]['n']})" for a in attacks],
            f"{r['fit_s']}",
            f"{r['edit_bytes'] / 1024:.0f}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
