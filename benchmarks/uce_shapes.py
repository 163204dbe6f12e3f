"""UCE on ShapesSD: does the concept go, do the others stay? Judged by the oracle.

    python benchmarks/uce_shapes.py [--n 8] [--seed 0] [--parts erase,logo,debias] [--json]

1. erase each object in turn (guide "", no preserve list; UCE Table 2's protocol): accuracy of the erased
   object and mean accuracy of the other seven, before and after (shapes-objects suite);
2. the same erasures, judged on synonyms the edit was not given (shapes-paraphrase suite: "disc", "hoop")
   and, apart, on phrases that contain the erased name (shapes-containing: "five-pointed star");
3. take down the memorised logo: erase "the acme logo" toward "" (shapes-logo suite: logo detection and
   controls), aligning on the last token (the paper's default) and on every token of the prompt;
4. debias (Algorithm 1): "a heart" (always red) toward a uniform share of red, blue, yellow and green, the
   other seven objects preserved, judged by the oracle over those four colours; one row per configuration
   (DEBIAS_CONFIGS: the official scripts' variants, last or trailing tokens, fixed step or the secant
   controller), each with the images the loop generated until it reached the tolerance and UCE's Delta on
   two seed sets it never saw: tuning seeds (--debias-tune-seed, where the default is chosen) and report
   seeds (--debias-report-seed, where it is reported). The loop measures on seeds seed * 100003 + 0..n-1.

    python benchmarks/uce_shapes.py --parts debias --json    # ~40 min on one busy CPU core
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from concept_edit import EditRequest, fit
from concept_edit.edit import applied
from concept_edit.evaluation.evaluate import evaluate
from concept_edit.evaluation.metrics import format_share, wilson
from concept_edit.evaluation.suites import Entry, Suite, get_suite
from concept_edit.generation import generate
from concept_edit.methods.uce.fit import UCEConfig, UCEInputs
from concept_edit.models import load_pipeline
from concept_edit.worlds.shapes.judge import OracleAttributeClassifier
from concept_edit.worlds.shapes.world import OBJECTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8, help="images per concept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--debias-images", type=int, default=24, help="debias: images per loop measurement")
    parser.add_argument("--debias-iterations", type=int, default=12, help="debias: at most this many iterations")
    parser.add_argument("--debias-eval-n", type=int, help="debias: images per evaluation seed set (default 6 * --n)")
    parser.add_argument("--debias-tune-seed", type=int, default=20_000, help="debias: first tuning seed")
    parser.add_argument("--debias-report-seed", type=int, default=10_000, help="debias: first report seed")
    parser.add_argument("--debias-configs", default="", help="debias: comma-separated subset of DEBIAS_CONFIGS")
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


# name -> (variant, tokens, controller, eta or the secant's first step)
DEBIAS_CONFIGS = {
    "add-last-0.1": ("train_debias_add", "last", "fixed", 0.1),
    "add-last-1.5": ("train_debias_add", "last", "fixed", 1.5),
    "add-trailing-0.1": ("train_debias_add", "trailing", "fixed", 0.1),
    "add-trailing-1.5": ("train_debias_add", "trailing", "fixed", 1.5),
    "main-trailing-0.1": ("train_debias_main", "trailing", "fixed", 0.1),
    "sd-last-1": ("uce_sd_debias", "last", "fixed", 1.0),
    "sd-trailing-1": ("uce_sd_debias", "trailing", "fixed", 1.0),
    "add-last-secant": ("train_debias_add", "last", "secant", 1.5),
    "add-trailing-secant": ("train_debias_add", "trailing", "secant", 0.1),
    "sd-last-secant": ("uce_sd_debias", "last", "secant", 1.0),
}
DEBIAS_CONCEPT = "a heart"
DEBIAS_COLORS = ("red", "blue", "yellow", "green")


def _debias(pipe, args) -> dict:
    """Every debias configuration on the same task; each judged on tuning seeds and on report seeds."""
    judge = OracleAttributeClassifier()
    args.debias_eval_n = args.debias_eval_n or 6 * args.n
    tune_seeds = list(range(args.debias_tune_seed, args.debias_tune_seed + args.debias_eval_n))
    report_seeds = list(range(args.debias_report_seed, args.debias_report_seed + args.debias_eval_n))
    loop_seeds = [args.seed * 100_003 + k for k in range(args.debias_images)]  # what uce_debias measures on
    assert not set(loop_seeds) & (set(tune_seeds) | set(report_seeds)), "evaluation seeds overlap the loop's"
    others = tuple(f"a {o}" for o in OBJECTS if o != "heart")  # preserved: the rest of the world
    request = EditRequest(concepts=(DEBIAS_CONCEPT,), mode="debias", attributes=DEBIAS_COLORS, preserve=others)
    out = {
        "concept": DEBIAS_CONCEPT,
        "attributes": list(DEBIAS_COLORS),
        "preserved": list(others),
        "loop_seeds": [loop_seeds[0], loop_seeds[-1]],
        "tune_seeds": [tune_seeds[0], tune_seeds[-1]],
        "report_seeds": [report_seeds[0], report_seeds[-1]],
        "images_per_measurement": args.debias_images,
        "max_iterations": args.debias_iterations,
        "tolerance": UCEConfig.debias_tolerance,
        "unedited": {
            "tune": _read_hearts(pipe, None, tune_seeds, judge),
            "report": _read_hearts(pipe, None, report_seeds, judge),
        },
        "rows": [],
    }
    names = args.debias_configs.split(",") if args.debias_configs else list(DEBIAS_CONFIGS)
    for name in names:
        variant, tokens, controller, step = DEBIAS_CONFIGS[name]
        config = UCEConfig(
            tokens=tokens,
            debias_variant=variant,
            debias_controller=controller,
            debias_step=step,
            debias_images=args.debias_images,
            debias_max_iterations=args.debias_iterations,
        )
        started = time.perf_counter()
        inputs = UCEInputs(classifier=judge)
        edit = fit(pipe, "uce", request, config, inputs, seed=args.seed, progress=not args.json)
        seconds = time.perf_counter() - started
        stats = edit.manifest["stats"]
        row = {
            "name": name,
            "variant": variant,
            "tokens": tokens,
            "controller": controller,
            "step": step,
            "reached": not stats["unconverged"],
            "iterations": stats["iterations"],
            "generations": stats["generations"],
            "loop_shares": stats["final_ratios"][DEBIAS_CONCEPT],
            "trajectory": [h["ratios"][DEBIAS_CONCEPT] for h in stats["history"]],
            "seconds": round(seconds, 1),
            "tune": _read_hearts(pipe, edit, tune_seeds, judge),
            "report": _read_hearts(pipe, edit, report_seeds, judge),
        }
        out["rows"].append(row)
        _print_debias_row(row)  # as each finishes (a long run); the table is printed again at the end
    # the default is chosen on the tuning seeds only: the smallest Delta, then the fewest generations
    best = min(out["rows"], key=lambda r: (round(r["tune"]["deviation"]["mean"], 6), r["generations"]))
    out["best_on_tuning_seeds"] = best["name"]
    return out


def _read_hearts(pipe, edit, seeds: list[int], judge) -> dict:
    """The judge's reading over the debias attributes, UCE's Delta, the free colour reading and the object."""
    prompts = [DEBIAS_CONCEPT] * len(seeds)
    if edit is None:
        images = generate(pipe, prompts, seeds)
    else:
        with applied(pipe, edit):
            images = generate(pipe, prompts, seeds)
    picks = np.asarray(judge(images, DEBIAS_COLORS))  # -1: the oracle reads no colour ("none")
    reading = judge.oracle.read(images)
    n = len(seeds)
    one_hot = (picks[:, None] == np.arange(len(DEBIAS_COLORS))).astype(float)  # a "none" row is all zeros
    return {
        "n": n,
        "shares": {c: _share(int((picks == k).sum()), n) for k, c in enumerate(DEBIAS_COLORS)},
        "none": _share(int((picks == -1).sum()), n),
        "deviation": _deviation_ci(one_hot),
        "max_error": float(np.abs(one_hot.mean(0) - 1 / len(DEBIAS_COLORS)).max()),
        "free_colour": {c: int(sum(x == c for x in reading.color)) for c in sorted(set(reading.color))},
        "heart_drawn": _share(sum(x == "heart" for x in reading.object), n),
    }


def _share(hits: int, n: int) -> dict:
    return {"accuracy": hits / n, "n": n, "ci95": list(wilson(hits, n))}


def _deviation_ci(one_hot: np.ndarray) -> dict:
    """UCE's Delta (mean |p - p_des| / p_des, uniform p_des) with a percentile-bootstrap 95% interval over images."""
    p_des = 1 / one_hot.shape[1]
    rng = np.random.default_rng(0)
    picks = rng.integers(len(one_hot), size=(2000, len(one_hot)))
    boot = np.sort((np.abs(one_hot[picks].mean(1) - p_des) / p_des).mean(1))
    mean = float((np.abs(one_hot.mean(0) - p_des) / p_des).mean())
    return {"mean": mean, "ci95": [float(boot[49]), float(boot[1949])], "n": len(one_hot)}


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
        f"\ndebias {d['concept']!r} toward uniform over {', '.join(d['attributes'])} (others preserved); loop: "
        f"{d['images_per_measurement']} images per measurement (seeds {d['loop_seeds'][0]}-{d['loop_seeds'][1]}), "
        f"at most {d['max_iterations']} iterations, tolerance {d['tolerance']}; judged on tuning seeds "
        f"{d['tune_seeds'][0]}-{d['tune_seeds'][1]} and report seeds {d['report_seeds'][0]}-{d['report_seeds'][1]} "
        f"(n = {d['unedited']['tune']['n']} each)"
    )
    print(
        f"{'config':<22}{'variant':<19}{'tokens':<10}{'control':<8}{'eta':>5}{'reached':>9}{'images':>8}"
        f"{'tune Delta [95% CI]':>22}{'report Delta [95% CI]':>24}{'red (report)':>22}{'heart drawn':>13}"
    )
    unedited = {"name": "unedited", "variant": "", "tokens": "", "controller": "", "step": None, **d["unedited"]}
    for row in [unedited, *d["rows"]]:
        _print_debias_row(row)
    print(f"  best on the tuning seeds (smallest Delta, then fewest images): {d['best_on_tuning_seeds']}")


def _print_debias_row(r: dict) -> None:
    def delta(part):
        x = r[part]["deviation"]
        return f"{x['mean']:.2f} [{x['ci95'][0]:.2f}, {x['ci95'][1]:.2f}]"

    step = "" if r["step"] is None else f"{r['step']:g}"
    reached = "" if "reached" not in r else ("yes" if r["reached"] else "no")
    images = "" if "generations" not in r else str(r["generations"])
    print(
        f"{r['name']:<22}{r['variant']:<19}{r['tokens']:<10}{r['controller']:<8}{step:>5}{reached:>9}{images:>8}"
        f"{delta('tune'):>22}{delta('report'):>24}{format_share(r['report']['shares']['red'], n=False):>22}"
        f"{r['report']['heart_drawn']['accuracy']:>13.2f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
