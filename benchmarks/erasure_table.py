"""One table for every erasure method on ShapesSD, with the attacks that try to bring the concept back.

    python benchmarks/erasure_table.py [--concepts circle,striped,"the acme logo"] [--methods uce,esd-x,...]
        [--n 16] [--seed 0] [--train-seed 0] [--attacks paraphrase,soft-prompt,...] [--quick] [--json]
        [--rows-file rows.jsonl]

Every registered method that erases (`concept-edit methods`; ESD as its two variants ESD-x and ESD-u, AdvUnlearn
as the paper's text encoder, as ESD-x's set (advunlearn-x, and advunlearn-x-reg with the options chosen on the
tuning seeds for circle, and advunlearn-x-null, those with the key/value updates held off the retain prompts'
subspace, and advunlearn-x-null-6e-4, at a larger step), and as the keys and values alone, advunlearn-kv) is
fitted at its documented default (Selective Amnesia, which needs a surrogate on a text-to-image model,
with the one `AMNESIA_SURROGATES` names for the concept) to each concept: an object ("circle"), a style
("striped") and the memorised "the acme logo". One row per (method, concept):
* target accuracy (the concept's suite: shapes-objects, shapes-styles or shapes-logo) and the others' mean
  accuracy on the same suite (other objects, other styles, the logo suite's object controls), with n and
  Wilson 95% intervals;
* for an object, what leaks through its true synonyms (shapes-paraphrase) and through phrases that contain
  its name (shapes-containing);
* the Frechet distance of oracle features to true renders and to the unedited model's images, and the image
  change against the unedited model (LPIPS if installed, else oracle-feature cosine distance);
* each attack's success rate (`concept_edit.attacks.probe` at its default budget: paraphrase, soft-prompt,
  ring-a-bell, concept-inversion, and soft-prompt's P4D-N (16 free tokens as the whole prompt), UnlearnDiff's
  objective and the unoptimised random-prefix control as their own columns; n attack images, Wilson
  interval, and the prompt-level interval at n = distinct prompts). The default budgets are far below the
  references (soft-prompt 200 steps against 2000 in UnlearnDiff's P4D and 3000 in P4D; ring-a-bell 30
  generations against the notebook's 3000): the rates are lower bounds. The defaults were set by hand on
  the circle erasures (README, "Attacks"), not tuned on the tuning seeds;
* fit time and edit-file size.
Every printed figure has its n, and an interval where the figure is a share; the Frechet distance and image
change are means over the suite's n images, printed with n and no interval (the evaluation gives none).
Suite seeds start at --seed, attacks use --seed too, fitting uses --train-seed; seeds 5000 and above are
kept for tuning and refused here. A row that fails (a fit, an evaluation, or an attack that refuses, such as
the paraphrase attack on the logo, whose every other caption names it) is recorded with its reason instead
of stopping the table. With --rows-file, each finished row is appended to that JSONL file (rewritten
atomically) and rows already in it are skipped, so an interrupted run resumes (each row records the --n, --seed and
--train-seed it was made with, and a file whose rows were made at other ones is refused); with --fill as well, rows
in it that lack a column of --attacks get it: the method is fitted again at the same --train-seed and must give the
row's target accuracy again (else the row is marked `refit_mismatch` and left as it was), so a new attack is
measured on the same edit as the row's other columns (`filled_columns` names them); --fill adds no row. The
full table takes hours on a 2-core CPU (ESD, Selective Amnesia and the soft-prompt attack dominate); `--quick`
runs a tiny setting (UCE and eigen on "circle", 2 images per concept, minimal attack budgets) to check the
script end to end.
The last line with --json is {"rows": [{"method", "concept", "target_accuracy", "others_accuracy",
"attack_success": {attack: rate}, ...}]}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

from concept_edit import EditRequest, fit, make_config
from concept_edit.attacks import ATTACKS, ConceptInversionOptions, RingABellOptions, SoftPromptOptions, probe
from concept_edit.evaluation.evaluate import evaluate
from concept_edit.evaluation.metrics import format_share, wilson
from concept_edit.evaluation.suites import get_suite
from concept_edit.methods import available_methods, get_method
from concept_edit.models import load_pipeline
from concept_edit.worlds.shapes.vocabulary import oracle_head

CONCEPTS = ("circle", "striped", "the acme logo")
QUICK = {
    "methods": "uce,eigen",
    "concepts": "circle",
    "n": 2,
    "budgets": {"paraphrase": 2, "soft-prompt": 2, "ring-a-bell": 2, "concept-inversion": 2},
    "options": {
        "soft-prompt": SoftPromptOptions(eval_every=1, timesteps=4),
        "ring-a-bell": RingABellOptions(population=8, searches=1),
        "concept-inversion": ConceptInversionOptions(samples=2, batch_size=2),
    },
}


# attack columns that are another setting of one attack: (attack, its options). The evaluation's settings are
# not the defences': RECE trains with no attack; AdvUnlearn's inner attack is 1 free prefix token before the bare
# concept word, 10 Adam steps at a time on its own training x_t (training seed 0), tuned on suite and attack seeds
# 5000+; the table's attacks use 3 prefix tokens before, or 16 tokens instead of, the suite's full captions, 200
# steps, and seeds 0+ (and concept inversion, ring-a-bell and paraphrase are other attacks altogether)
VARIANTS = {
    "soft-prompt-16": ("soft-prompt", {"tokens": 16, "placement": "alone"}),  # P4D-N
    "unlearndiff": ("soft-prompt", {"objective": "unlearndiff"}),  # UnlearnDiff's own objective
    "random-prefix": ("soft-prompt", {"optimise": False}),  # the control: the random start, unoptimised
}


# AdvUnlearn-x as chosen on the tuning seeds on 2026-12-05 (advunlearn_tuning.json, run p): the retain loss summed
# into each step over 16 retain trajectories, ESD's negative guidance 2, 250 iterations (100 of them warm-up); on
# the tuning seeds circle 0/16, the others 108/112 (unedited 110/112), soft-prompt 4/16
ADVUNLEARN_X_REG = {"modules": "x", "retain_mode": "reg", "retain_batch": 16, "iterations": 250, "eta": 2.0}
# the same with its key/value updates held off the retain and empty prompts' embedding subspace (--null-space,
# AlphaEdit's projection), 3 attack tokens and lr 4.5e-4, chosen on the tuning seeds on 2026-12-05 (advunlearn_tuning
# run ab, training seed 5000): circle 0/16, the others 109/112 (unedited 110/112), soft-prompt 2/16; at training
# seeds 5001 and 5002 afterwards (runs ac, ad) 3/16 and 1/16, 106 and 109/112, 1/16 and 6/16
ADVUNLEARN_X_NULL = {**ADVUNLEARN_X_REG, "null_space": 0.95, "attack_tokens": 3, "lr": 4.5e-4}
# the same at lr 6e-4, chosen on the tuning seeds on 2026-12-05 over three training seeds (runs aa, aq, ar at
# 5000-5002): soft-prompt 1, 1 and 3/16 (run ab's configuration: 18/80 over five), circle 0, 4 and 0/16, the others
# 99, 107 and 110/112; one fit of three met the bar (ab's: one of five)
ADVUNLEARN_X_NULL_6E4 = {**ADVUNLEARN_X_NULL, "lr": 6e-4}
# the text encoder with its empty and retain prompts' embeddings held (runs bo-bq of advunlearn_tuning.json: chosen
# on three tuning training seeds, two of which met the bar, before any report seed ran)
ADVUNLEARN_TE_HELD = {"retain_mode": "iter", "attack_tokens": 3, "retain_embeddings": 1.0, "erase_plain": True,
                      "lr": 3e-4}  # fmt: skip


def attack_columns() -> list[str]:
    return [*ATTACKS, *VARIANTS]


def erasure_rows() -> dict[str, tuple[str, dict]]:
    """Row name -> (method, config options): every registered method with an erase mode, ESD as -x and -u."""
    rows = {}
    for name in available_methods():
        if "erase" not in get_method(name).modes:
            continue
        if name == "esd":
            rows["esd-x"], rows["esd-u"] = ("esd", {"variant": "x"}), ("esd", {"variant": "u"})
        elif name == "advunlearn":  # the paper's text encoder, ESD-x's set, and its key/value projections only
            rows["advunlearn"], rows["advunlearn-x"] = ("advunlearn", {}), ("advunlearn", {"modules": "x"})
            rows["advunlearn-kv"] = ("advunlearn", {"modules": "kv"})
            rows["advunlearn-x-reg"] = ("advunlearn", ADVUNLEARN_X_REG)
            rows["advunlearn-x-null"] = ("advunlearn", ADVUNLEARN_X_NULL)
            rows["advunlearn-x-null-6e-4"] = ("advunlearn", ADVUNLEARN_X_NULL_6E4)
            rows["advunlearn-te-held"] = ("advunlearn", ADVUNLEARN_TE_HELD)
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


TUNING_SEEDS = 5000


def read_rows(path: Path | None) -> list[dict]:
    """The rows already in a --rows-file (one JSON object a line; none if the file does not exist)."""
    if path is None or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_row(path: Path, row: dict) -> None:
    """Add one row to the JSONL file atomically (`write_rows`)."""
    write_rows(path, [*read_rows(path), row])


def write_rows(path: Path, rows: list[dict]) -> None:
    """Write the JSONL file atomically: the whole file is written to a temporary and renamed."""
    lines = [json.dumps(r) for r in rows]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _attack_cell(probed: dict) -> dict:
    return {
        "rate": probed["attack_success_rate"],
        "n": probed["n"],
        "successes": probed["successes"],
        "ci95": probed["ci95"],
        "prompt_level": probed.get("prompt_level"),
        "given_unedited": probed.get("given_unedited"),
        "without_concept_words": probed.get("without_concept_words"),
        "best_of_k_success_rate": probed.get("best_of_k_success_rate"),
        "edited_no_attack": probed["edited_no_attack"],
        "protocol": probed["protocol"],
        "seconds": probed["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=None, help="comma-separated rows (default: every erasure method)")
    parser.add_argument("--concepts", default=",".join(CONCEPTS))
    parser.add_argument("--n", type=int, default=16, help="images per concept, and attack images per attack")
    parser.add_argument("--seed", type=int, default=0, help="first suite seed; the attacks' seed")
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--attacks", default=",".join(attack_columns()))
    parser.add_argument("--quick", action="store_true", help="tiny setting: UCE and eigen on circle, n 2")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rows-file", type=Path, default=None, help="JSONL: append each finished row; skip rows in it")
    parser.add_argument("--fill", action="store_true",
                        help="rows in --rows-file get the --attacks columns they lack (the method refitted, checked)")
    args = parser.parse_args()
    for name in ("seed", "train_seed"):
        if getattr(args, name) >= TUNING_SEEDS:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: seeds {TUNING_SEEDS}+ are kept for tuning")
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
    unknown = [a for a in attacks if a not in attack_columns()]
    if unknown:
        parser.error(f"unknown attacks {unknown}; choose from {', '.join(attack_columns())}")
    concepts = [c.strip() for c in args.concepts.split(",") if c.strip()]

    if args.fill and args.rows_file is None:
        parser.error("--fill adds columns to the rows of a --rows-file")
    rows = read_rows(args.rows_file)
    # a row is resumed only at the settings it was made with (rows from before they were recorded are taken as is)
    settings = {"n": args.n, "seed": args.seed, "train_seed": args.train_seed}
    other = next((r for r in rows if any(k in r and r[k] != v for k, v in settings.items())), None)
    if other is not None:
        made = ", ".join(f"--{k.replace('_', '-')} {other[k]}" for k in settings if k in other)
        asked = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items())
        parser.error(f"--rows-file {args.rows_file}: its rows were made with {made}; this run asks for {asked}; "
                     "give another file")  # fmt: skip
    done = {(r["method"], r["concept"]) for r in rows}
    lacking = [i for i, r in enumerate(rows) if args.fill and r["method"] in methods and r["concept"] in concepts
               and "refused" not in r and any(a not in r.get("attacks", {}) for a in attacks)]  # fmt: skip
    pipe, suites, baselines = None, {}, {}
    if args.fill:  # only columns are added: rows not in the file are left to a run without --fill
        done |= {(row, concept) for concept in concepts for row in methods}
    if lacking or any((row, concept) not in done for concept in concepts for row in methods):  # else: only print
        pipe = load_pipeline("shapes", device="cpu")
        for name in {_home(c)[0] for c in concepts} | ({"shapes-paraphrase", "shapes-containing"}):
            suites[name] = get_suite(name, args.n, args.seed)
            baselines[name] = evaluate(pipe, suites[name], progress=False)
    for i in lacking:
        rows[i] = fill(pipe, known, suites, baselines, rows[i], attacks, args, budgets, options)
        print(f"{rows[i]['method']} / {rows[i]['concept']}: filled {rows[i].get('filled_columns')}"
              + (" (refit mismatch: not filled)" if "refit_mismatch" in rows[i] else ""), flush=True)
        write_rows(args.rows_file, rows)
    for concept in concepts:
        home, label = _home(concept)
        for row in methods:
            if (row, concept) in done:
                if not args.fill:
                    print(f"{row} / {concept}: already in {args.rows_file}, skipped", flush=True)
                continue
            try:
                result = _row(pipe, row, known[row], concept, home, label, suites, baselines, attacks, args, budgets,
                              options)  # fmt: skip
            except Exception as error:  # a failed row is recorded, not fatal: the table goes on
                result = {"method": row, "concept": concept, "refused": f"{type(error).__name__}: {error}"}
                print(f"{row} / {concept}: refused ({result['refused']})", flush=True)
            else:
                print(f"{row} / {concept}: fit {result['fit_s']:.0f} s, target {result['target_accuracy']:.2f}",
                      flush=True)  # fmt: skip
            result.update(settings)
            rows.append(result)
            if args.rows_file is not None:
                append_row(args.rows_file, result)
    _print(rows, attacks)
    if args.json:
        print(json.dumps({"n": args.n, "seed": args.seed, "train_seed": args.train_seed, "rows": rows}))


# Selective Amnesia needs a surrogate on a text-to-image model (the paper's SD runs name one per concept): the
# next label of the concept's own kind in the world's lists (object circle -> square, style striped -> dotted) and,
# for the logo, the first object; fixed before the run, not tuned
AMNESIA_SURROGATES = {"circle": "a square", "striped": "on a dotted background", "the acme logo": "a circle"}


def _fit(pipe, spec, concept, args):
    """The row's edit and its fit time: the method at its documented default, seeded by --train-seed."""
    method, config = spec
    if method == "amnesia":
        config = {**config, "surrogate": AMNESIA_SURROGATES.get(concept, "uniform")}
    started = time.perf_counter()
    edit = fit(pipe, method, EditRequest(concepts=(concept,)), make_config(method, **config), seed=args.train_seed,
               progress=False)  # fmt: skip
    return edit, config, time.perf_counter() - started


def _row(pipe, row, spec, concept, home, label, suites, baselines, attacks, args, budgets, options) -> dict:
    """One (method, concept) row; an attack that refuses is recorded in its cell."""
    edit, config, fit_s = _fit(pipe, spec, concept, args)
    after, _ = evaluate(pipe, suites[home], edits=[edit], target=label, baseline_images=baselines[home][1],
                        progress=False)  # fmt: skip
    per, before = after["per_concept"], baselines[home][0]["per_concept"]
    others = [c for c in per if c != label]
    result = {
        "method": row,
        "config": config,
        "concept": concept,
        "suite": home,
        "n_images": len(suites[home].entries),
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
    _attack(pipe, edit, result, attacks, args, budgets, options)
    return result


def attack_setting(attack: str, options: dict | None = None) -> tuple[str, object]:
    """(the attack probe runs, its options) for a column: a variant is its base attack with the variant's settings
    on top of the base's `options` (the quick ones, if any)."""
    base, extra = VARIANTS.get(attack, (attack, {}))
    chosen = (options or {}).get(base)
    if extra:
        chosen = dataclasses.replace(chosen, **extra) if chosen is not None else SoftPromptOptions(**extra)
    return base, chosen


def _attack(pipe, edit, result: dict, attacks, args, budgets, options) -> None:
    """Run each of `attacks` on the row's edit and record its cell (an attack that refuses: its reason)."""
    for attack in attacks:
        base, chosen = attack_setting(attack, options)
        try:
            probed = probe(pipe, result["concept"], base, edits=[edit], budget=budgets.get(base), n=args.n,
                           seed=args.seed, options=chosen)  # fmt: skip
        except ValueError as error:
            result["attacks"][attack] = {"refused": str(error)}
            continue
        result["attack_success"][attack] = probed["attack_success_rate"]
        result["attacks"][attack] = _attack_cell(probed)


def fill(pipe, known, suites, baselines, row: dict, attacks, args, budgets, options) -> dict:
    """A row of an earlier run with the columns of `attacks` it lacks. The method is fitted again at the same
    seed; the refitted edit must give the row's target accuracy again (else the row is marked and left as it
    was), so the new columns are measured on the edit the row's other columns were."""
    missing = [a for a in attacks if a not in row.get("attacks", {})]
    if not missing or "refused" in row:
        return row
    home, label = _home(row["concept"])
    edit, _, _ = _fit(pipe, known[row["method"]], row["concept"], args)
    after, _ = evaluate(pipe, suites[home], edits=[edit], target=label, compute_baseline=False, progress=False)
    if after["target_accuracy"] != row["target_accuracy"]:
        return {**row, "refit_mismatch": {"target_accuracy": after["target_accuracy"], "columns_not_added": missing}}
    filled = {**row, "attack_success": dict(row["attack_success"]), "attacks": dict(row["attacks"])}
    _attack(pipe, edit, filled, missing, args, budgets, options)
    filled["filled_columns"] = sorted(set(row.get("filled_columns", [])) | set(missing))
    return filled


def _ci(cell: dict | None, key: str = "accuracy") -> str:
    """'0.25 [0.10, 0.49] (n=16)' for a share cell; '' when there is none."""
    if not cell:
        return ""
    return format_share({"accuracy": cell[key], "ci95": cell["ci95"], "n": cell["n"]})


def _attack_text(cell: dict | None) -> str:
    if not cell:
        return ""
    if "refused" in cell:
        return "refused"
    text = _ci(cell, "rate")
    level = cell.get("prompt_level") or {}
    if level.get("ci95_prompt_level"):
        low, high = level["ci95_prompt_level"]
        text += f"; {level['prompts']} prompts [{low:.2f}, {high:.2f}]"
    return text


def _print(rows: list[dict], attacks: list[str]) -> None:
    head = ["method", "concept", "target after (before)", "others after (before)", "synonyms", "containing",
            "Frechet to renders", "image change", *[f"{a} success" for a in attacks], "fit s", "edit KB"]  # fmt: skip
    print("\n| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        if "refused" in r:
            print(f"| {r['method']} | {r['concept']} | refused: {r['refused']} |")
            continue
        n_images = r.get("n_images", "?")
        cells = [
            r["method"],
            r["concept"],
            f"{_ci(r['target'])} ({_ci(r['target_before'])})",
            f"{_ci(r['others'])} ({_ci(r['others_before'])})" if r["others"] else "",
            _ci(r.get("paraphrase")),
            _ci(r.get("containing")),
            f"{r['frechet_to_renders']:.1f} (n={n_images})" if r.get("frechet_to_renders") is not None else "",
            f"{r['image_change']['mean']:.3f} (n={n_images})" if r.get("image_change") else "",
            *[_attack_text(r["attacks"].get(a)) for a in attacks],
            f"{r['fit_s']}",
            f"{r['edit_bytes'] / 1024:.0f}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
