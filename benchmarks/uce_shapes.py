"""UCE on ShapesSD: does the concept go, do the others stay? Judged by the oracle.

    python benchmarks/uce_shapes.py [--n 8] [--seed 0] [--parts erase,logo,debias] [--json]

1. erase each object in turn (guide "", no preserve list; UCE Table 2's protocol): accuracy of the erased
   object and mean accuracy of the other seven, before and after (shapes-objects suite);
2. the same erasures, judged on synonyms the edit was not given (shapes-paraphrase suite: "disc", "hoop")
   and, apart, on phrases that contain the erased name (shapes-containing: "five-pointed star");
3. take down the memorised logo: erase "the acme logo" toward "" (shapes-logo suite: logo detection and
   controls), aligning on the last token (the paper's default) and on every token of the prompt;
4. debias (Algorithm 1): "a heart" and "a star" toward uniform colour over all 8 colours, judged by the oracle,
   eta = --debias-step, the other six objects preserved; UCE's Delta on the shapes-bias suite ("a heart",
   "a picture of a heart", ...) before and after, on seeds the debias loop never saw.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from concept_edit import EditRequest, fit
from concept_edit.evaluation.classifiers import OracleAttributeClassifier
from concept_edit.evaluation.evaluate import evaluate
from concept_edit.evaluation.metrics import format_share
from concept_edit.evaluation.suites import Entry, Suite, get_suite
from concept_edit.methods.uce import UCEConfig, UCEInputs
from concept_edit.models import load_pipeline
from concept_edit.shapes.world import COLORS, OBJECTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8, help="images per concept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--debias-images", type=int, default=24)
    parser.add_argument("--debias-step", type=float, default=1.5, help="eta (official 0.1 barely moves ShapesSD)")
    parser.add_argument("--debias-iterations", type=int, default=20)
    parser.add_argument("--parts", default="erase,logo,debias", help="comma-separated subset to run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    pipe = load_pipeline("shapes", device="cpu")
    parts = set(args.parts.split(","))
    out: dict = {"n": args.n, "seed": args.seed}
    if "erase" in parts:
        out.update(_erase_objects(pipe, args))
    if "logo" in parts:
        out["logo"] = _logo(pipe, args)
    if "debias" in parts:
        out["debias"] = _debias(pipe, args)
    _print(out)
    if args.json:  # the last line
        print(json.dumps(out))


def _erase_objects(pipe, args) -> dict:
    objects = get_suite("shapes-objects", args.n, args.seed)
    # true synonyms ("disc") and phrases that contain the name ("five-pointed star") are reported apart
    phrase_suites = {kind: get_suite(f"shapes-{kind}", args.n, args.seed) for kind in ("paraphrase", "containing")}
    base_obj, base_obj_images = evaluate(pipe, objects, progress=False)
    base = {kind: evaluate(pipe, suite, progress=False) for kind, suite in phrase_suites.items()}
    erase_rows = []
    for obj in OBJECTS:
        started = time.perf_counter()
        edit = fit(pipe, "uce", EditRequest(concepts=(obj,)), seed=args.seed)
        fit_s = time.perf_counter() - started
        after, _ = evaluate(pipe, objects, edits=[edit], target=obj, baseline_images=base_obj_images, progress=False)
        others_before = np.mean([v["accuracy"] for k, v in base_obj["per_concept"].items() if k != obj])
        row = {
            "concept": obj,
            "fit_s": round(fit_s, 3),
            "target_before": base_obj["per_concept"][obj],
            "target_after": after["per_concept"][obj],
            "others_before": float(others_before),
            "others_after": after["others_accuracy"],
            "image_change_others": _others_change(after),
            "frechet_to_renders": after["frechet_to_renders"],
        }
        for kind, suite in phrase_suites.items():
            if obj not in suite.concepts:
                continue
            results, images = base[kind]
            phrase_after, _ = evaluate(pipe, suite, edits=[edit], target=obj, baseline_images=images, progress=False)
            row[f"{kind}_before"] = results["per_concept"][obj]
            row[f"{kind}_after"] = phrase_after["per_concept"][obj]
        erase_rows.append(row)
    return {"erase": erase_rows, "frechet_to_renders_unedited": base_obj["frechet_to_renders"]}


def _the_controls(n: int, seed: int) -> Suite:
    """'the circle', 'the square', ...: prompts that share the logo prompt's leading 'the'."""
    entries = [Entry(f"the {obj}", obj, seed + k, "object", {"obj": obj}) for obj in OBJECTS for k in range(n)]
    return Suite("the-controls", 1, "objects named with a leading 'the'", tuple(entries))


def _logo(pipe, args) -> dict:
    logo_suite = get_suite("shapes-logo", 2 * args.n, args.seed)
    the_suite = _the_controls(max(1, args.n // 2), args.seed)
    logo_before, logo_images = evaluate(pipe, logo_suite, target="logo", progress=False)
    the_before, the_images = evaluate(pipe, the_suite, progress=False)
    out = {
        "detected_before": logo_before["per_concept"]["logo"],
        "controls_before": logo_before["others_accuracy"],
        "the_controls_before": the_before["mean_accuracy"],
        "n_logo": logo_before["per_concept"]["logo"]["n"],
        "n_controls": sum(v["n"] for k, v in logo_before["per_concept"].items() if k != "logo"),
        "n_the_controls": len(the_suite.entries),
    }
    for tokens in ("last", "trailing", "all"):
        logo_edit = fit(pipe, "uce", EditRequest(concepts=("the acme logo",)), UCEConfig(tokens=tokens), seed=args.seed)
        logo_after, _ = evaluate(
            pipe, logo_suite, edits=[logo_edit], target="logo", baseline_images=logo_images, progress=False
        )
        the_after, _ = evaluate(pipe, the_suite, edits=[logo_edit], baseline_images=the_images, progress=False)
        out[tokens] = {
            "detected_after": logo_after["per_concept"]["logo"],
            "controls_after": logo_after["others_accuracy"],
            "the_controls_after": the_after["mean_accuracy"],
        }
    return out


def _debias(pipe, args) -> dict:
    bias_suite = get_suite("shapes-bias", 3 * args.n, args.seed + 10_000)  # seeds the debias loop never uses
    bias_before, _ = evaluate(pipe, bias_suite, progress=False)
    started = time.perf_counter()
    # debias and preserve the prompt form users write ("a heart"); the suite also asks "a picture of a heart"
    others = tuple(f"a {o}" for o in OBJECTS if o not in ("heart", "star"))  # keep the rest of the world
    request = EditRequest(concepts=("a heart", "a star"), mode="debias", attributes=tuple(COLORS), preserve=others)
    config = UCEConfig(
        debias_images=args.debias_images, debias_step=args.debias_step, debias_max_iterations=args.debias_iterations
    )
    inputs = UCEInputs(classifier=OracleAttributeClassifier())
    debias_edit = fit(pipe, "uce", request, config, inputs, seed=args.seed, progress=not args.json)
    debias_s = time.perf_counter() - started
    bias_after, _ = evaluate(pipe, bias_suite, edits=[debias_edit], progress=False)
    stats = debias_edit.manifest["stats"]
    return {
        "step": args.debias_step,
        "final_ratios": stats["final_ratios"],
        "iterations": stats["iterations"],
        "unconverged": stats["unconverged"],
        "seconds": round(debias_s, 1),
        "deviation_before": bias_before["deviation"],
        "deviation_after": bias_after["deviation"],
        "red_hearts_before": bias_before["distribution"]["heart"]["red"],
        "red_hearts_after": bias_after["distribution"]["heart"]["red"],
        "yellow_stars_before": bias_before["distribution"]["star"]["yellow"],
        "yellow_stars_after": bias_after["distribution"]["star"]["yellow"],
        "object_accuracy_before": bias_before["per_concept"],
        "object_accuracy_after": bias_after["per_concept"],
    }


def _others_change(results: dict) -> float | None:
    change = results.get("image_change")
    return None if change is None else change["mean"]


def _print(out: dict) -> None:
    if "erase" in out:
        _print_erase(out)
    if "logo" in out:
        logo = out["logo"]
        print(
            f"\nlogo take-down (erase 'the acme logo' toward ''; logo n={logo['n_logo']}, controls "
            f"n={logo['n_controls']}, 'the <object>' controls n={logo['n_the_controls']})"
        )

        def cell(row: dict) -> str:
            return format_share(row, n=False)

        print(
            f"  unedited        detected {cell(logo['detected_before'])}, controls {logo['controls_before']:.2f}, "
            f"'the' controls {logo['the_controls_before']:.2f}"
        )
        for tokens in ("last", "trailing", "all"):
            r = logo[tokens]
            print(
                f"  tokens={tokens:<8} detected {cell(r['detected_after'])}, controls {r['controls_after']:.2f}, "
                f"'the' controls {r['the_controls_after']:.2f}"
            )
    if "debias" in out:
        _print_debias(out["debias"])


def _print_erase(out: dict) -> None:
    n = out["n"]
    print(f"UCE erase on ShapesSD, one object at a time (guide '', no preserve list; n = {n} per cell)")
    print(
        f"{'erased':<10}{'drawn before':>13}{'after':>20}{'others before':>15}{'after':>8}"
        f"{'synonyms before':>17}{'after':>8}{'name-containing':>17}{'after':>8}{'fit s':>8}"
    )

    def share(row, key, interval=False):
        if key not in row:
            return "-"
        return format_share(row[key], interval=interval, n=False)

    for r in out["erase"]:
        print(
            f"{r['concept']:<10}{share(r, 'target_before'):>13}{share(r, 'target_after', True):>20}"
            f"{r['others_before']:>15.2f}{r['others_after']:>8.2f}{share(r, 'paraphrase_before'):>17}"
            f"{share(r, 'paraphrase_after'):>8}{share(r, 'containing_before'):>17}{share(r, 'containing_after'):>8}"
            f"{r['fit_s']:>8.2f}"
        )


def _print_debias(d: dict) -> None:
    print(
        f"\ndebias 'a heart', 'a star' over 8 colours (eta {d['step']}): {d['iterations']} iterations, "
        f"{d['seconds']} s, "
        f"unconverged {d['unconverged'] or 'none'}"
    )
    for concept, shares in d["final_ratios"].items():
        print(
            f"  last loop measurement, {concept}: "
            + " ".join(f"{c} {x:.2f}" for c, x in zip(COLORS, shares, strict=True))
        )
    print(
        f"  fresh seeds: red hearts {d['red_hearts_before']:.2f} -> {d['red_hearts_after']:.2f}; yellow stars "
        f"{d['yellow_stars_before']:.2f} -> {d['yellow_stars_after']:.2f} (uniform: {1 / 8:.3f})"
    )
    print(
        "  UCE's Delta (0 = uniform) on fresh seeds: "
        + ", ".join(
            f"{c} {d['deviation_before'][c]:.2f} -> {d['deviation_after'][c]:.2f}" for c in d["deviation_before"]
        )
    )
    print(
        "  object accuracy: "
        + ", ".join(
            f"{c} {d['object_accuracy_before'][c]['accuracy']:.2f} -> {d['object_accuracy_after'][c]['accuracy']:.2f}"
            for c in d["object_accuracy_before"]
        )
    )


if __name__ == "__main__":
    main()
