"""A defence's options on ShapesSD, on the TUNING seeds (5000+) only: the erased concept's accuracy, the other
objects', and the attacks' success, for each candidate configuration, beside the unedited model.

    python benchmarks/defence_tuning.py --method advunlearn --configs 'lr=1e-4;lr=3e-4,iterations=400'
        [--concept circle] [--n 8] [--seed 5000] [--train-seed 5000]
        [--attacks soft-prompt,concept-inversion,random-prefix]
        [--then 'uce;rece:rounds=2'] [--save-edits DIR] [--average A.safetensors,B.safetensors] [--json]

Each configuration (options `key=value` joined by commas; configurations by semicolons) is fitted on the concept
(with its method's own default preserved / retain set, as the erasure table fits it, or with `--preserve
others` the other objects), evaluated on shapes-objects (n images per object, seeds from --seed) and attacked by
each attack at its default budget (n attacked prompts, seeds from --seed); an attack may also be one of the erasure
table's variant columns (random-prefix, soft-prompt-16, unlearndiff). Every share has its n and Wilson 95%
interval; fit time is in seconds on this machine. The last line with --json is
{"unedited": ..., "rows": [...]}. With `--then`, each configuration's edit is also measured with each of the
`--then` stages (`method:k=v,...`) fitted on top of it, on the model with the edit applied (as `concept-edit edit
METHOD --edit FIRST` does), the two composed into one edit; its row says `then`, and its fit time is both fits'.
`--average` measures instead the uniform average of saved edits' weight changes (a model soup of
fits saved with --save-edits; every change must be a dense delta) and fits nothing.
`benchmarks/rece_tuning.py` is the same for RECE's round count.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the sibling script's helpers, however this one is run
from erasure_table import attack_setting  # noqa: E402
from rece_tuning import TUNING_SEEDS, _accuracies, _share, _text  # noqa: E402

from concept_edit import EditRequest, applied, compose, fit, make_config
from concept_edit.attacks import probe
from concept_edit.edit.changes import DenseDelta
from concept_edit.edit.file import Edit, EditError
from concept_edit.evaluation import evaluate, get_suite
from concept_edit.models import load_pipeline


def parse_configs(text: str) -> list[dict]:
    """'a=1,b=x;a=2,c=true' -> [{'a': 1, 'b': 'x'}, {'a': 2, 'c': True}] (numbers and true/false parsed; '' is
    the defaults)."""
    configs = []
    for part in text.split(";"):
        options = {}
        for pair in (p for p in part.split(",") if p.strip()):
            key, _, value = pair.partition("=")
            if value.strip().lower() in ("true", "false"):
                options[key.strip()] = value.strip().lower() == "true"
                continue
            try:
                options[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
            except ValueError:
                options[key.strip()] = value.strip()
        configs.append(options)
    return configs


def parse_stages(text: str) -> list[tuple[str, dict]]:
    """'uce;rece:rounds=2' -> [('uce', {}), ('rece', {'rounds': 2})]."""
    stages = []
    for part in (p.strip() for p in text.split(";") if p.strip()):
        method, _, options = part.partition(":")
        stages.append((method.strip(), parse_configs(options)[0]))
    return stages


def fit_on_top(pipe, first, method: str, options: dict, request: EditRequest, seed: int):
    """`method` fitted on `pipe` with `first` applied, composed with `first` into one edit."""
    with applied(pipe, first):
        second = fit(pipe, method, request, make_config(method, **options), seed=seed, progress=False)
    return compose(pipe, first, second)


def average_edits(pipe, edits: list[Edit], paths: list[str]):
    """One edit whose every dense delta is the mean of the edits' deltas on that tensor (a model soup)."""
    for edit in edits:  # each must be made for this model: applying one checks its base
        with applied(pipe, edit):
            pass
    targets = [[c.target for c in e.changes()] for e in edits]
    if any(t != targets[0] for t in targets) or any(c.kind != "dense" for e in edits for c in e.changes()):
        raise SystemExit("--average: the edits must change the same tensors, each by a dense delta")
    changes = [DenseDelta(parts[0].target, sum(c.delta.float() for c in parts) / len(parts))
               for parts in zip(*(e.changes() for e in edits), strict=True)]  # fmt: skip
    return Edit.create(pipe, changes, method="average", config={"parts": paths}, request={"concepts": []}, seed=None)


def _folder(value: str) -> Path:
    if not value.strip():
        raise argparse.ArgumentTypeError("give a folder")
    return Path(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="advunlearn")
    parser.add_argument("--configs", default="", help="candidate option sets: 'k=v,k=v;k=v' ('' = the defaults)")
    parser.add_argument("--concept", default="circle")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seed", type=int, default=TUNING_SEEDS, help="evaluation and attack seeds")
    parser.add_argument("--train-seed", type=int, default=TUNING_SEEDS, help="the fit's --seed")
    parser.add_argument("--attacks", default="soft-prompt,concept-inversion")
    parser.add_argument("--budget", type=int, default=None, help="every attack's budget (default: its own)")
    parser.add_argument("--preserve", choices=("none", "others"), default="none",
                        help="none: the method's own default, as the erasure table fits it; others: the other objects")
    parser.add_argument("--then", default="", help="stages fitted on top of each configuration's edit: 'm:k=v;m'")
    parser.add_argument("--save-edits", type=_folder, default=None, help="directory: each configuration's edit, saved")
    parser.add_argument("--average", default="", help="comma-separated saved edits: measure their average, fit none")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if min(args.seed, args.train_seed) < TUNING_SEEDS:
        parser.error(f"tuning runs on the tuning seeds ({TUNING_SEEDS}+), never on the reported ones")
    if args.average and (args.configs or args.then):
        parser.error("--average measures saved edits and fits nothing: give it without --configs and --then")
    try:  # bad stages, saved edits or a folder that is a file: one line before any work
        for method, options in parse_stages(args.then):
            make_config(method, **options)
        saved = [Edit.load(path) for path in args.average.split(",") if args.average]
    except (ValueError, TypeError, EditError) as error:
        parser.error(str(error))
    if args.save_edits is not None and args.save_edits.exists() and not args.save_edits.is_dir():
        parser.error(f"--save-edits {args.save_edits}: not a folder")
    pipe = load_pipeline("shapes", device="cpu")
    suite = get_suite("shapes-objects", n=args.n, seed=args.seed)
    others = tuple(c for c in suite.concepts if c != args.concept)
    results, _ = evaluate(pipe, suite, target=args.concept, progress=False)
    target, rest = _accuracies(results, args.concept)
    out = {"method": args.method, "unedited": {"target": target, "others": rest}, "rows": [], "n": args.n,
           "seed": args.seed, "train_seed": args.train_seed, "preserve": args.preserve}  # fmt: skip
    print(f"unedited: {args.concept} {_text(target)}, others {_text(rest)}", flush=True)
    if saved:
        paths = args.average.split(",")
        out["rows"].append(_measure(pipe, suite, average_edits(pipe, saved, paths), {"average_of": paths}, 0.0, args))
    for index, options in enumerate(parse_configs(args.configs) if not args.average else []):
        started = time.perf_counter()
        preserve = others if args.preserve == "others" else ()
        request = EditRequest(concepts=(args.concept,), preserve=preserve)
        edit = fit(pipe, args.method, request, make_config(args.method, **options), seed=args.train_seed,
                   progress=False)  # fmt: skip
        fit_s = time.perf_counter() - started
        if args.save_edits is not None:
            args.save_edits.mkdir(parents=True, exist_ok=True)
            edit.save(args.save_edits / f"{args.method}-{args.train_seed}-{index}.safetensors")
        out["rows"].append(_measure(pipe, suite, edit, options, fit_s, args))
        for method, extra in parse_stages(args.then):
            started = time.perf_counter()
            stacked = fit_on_top(pipe, edit, method, extra, request, args.train_seed)
            row = _measure(pipe, suite, stacked, options, fit_s + time.perf_counter() - started, args,
                           then=f"{method}:{json.dumps(extra)}")  # fmt: skip
            out["rows"].append(row)
    if args.json:
        print(json.dumps(out))


def _measure(pipe, suite, edit, options: dict, fit_s: float, args, then: str | None = None) -> dict:
    """One row: the edit's accuracies on the suite and each attack's success, printed as it finishes."""
    results, _ = evaluate(pipe, suite, edits=[edit], target=args.concept, progress=False, compute_baseline=False)
    target, rest = _accuracies(results, args.concept)
    row = {"options": options, "fit_s": round(fit_s, 3), "target": target, "others": rest, "attacks": {},
           "stats": edit.manifest.get("stats")}  # fmt: skip
    if then is not None:
        row["then"] = then
    for attack in (a for a in args.attacks.split(",") if a):
        base, chosen = attack_setting(attack)  # also the erasure table's variant columns (random-prefix, ...)
        r = probe(pipe, args.concept, base, edits=[edit], n=args.n, seed=args.seed, budget=args.budget,
                  options=chosen)  # fmt: skip
        row["attacks"][attack] = {**_share(r["successes"], r["n"]), "without_attack": r["edited_no_attack"]}
    attacks = "; ".join(f"{a} {_text(v)}" for a, v in row["attacks"].items())
    label = f"{options or 'defaults'}" + (f" then {then}" if then else "")
    print(f"{label} ({fit_s:.0f} s): {args.concept} {_text(target)}, others {_text(rest)}; {attacks}", flush=True)
    return row


if __name__ == "__main__":
    main()
