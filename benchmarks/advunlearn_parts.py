"""Which half of an AdvUnlearn cross-attention edit erases, and which costs the other objects (tuning seeds only).

    python benchmarks/advunlearn_parts.py [--parts all,kv,qo] [--n 16] [--seed 5000] [--train-seed 5000]
        [--options 'k=v,...'] [--budget B] [--json]

AdvUnlearn with `--modules x` (ESD-x's set: the query, key, value and output projections of every cross-attention)
is fitted on "circle" at its ShapesSD defaults (or with --options); then the edit is applied whole (`all`), with
only its key and value changes (`kv`: what reads the text) or with only its query and output changes (`qo`: what
acts on every prompt's image features). Each is evaluated on shapes-objects (n images per object) and attacked by
the soft-prompt attack (n prompts), at seeds from --seed, with Wilson 95% intervals. The last line with --json
is {"rows": [...]}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the sibling script's helpers, however this one is run
from defence_tuning import parse_configs  # noqa: E402
from rece_tuning import TUNING_SEEDS, _accuracies, _share, _text  # noqa: E402

from concept_edit import Edit, EditRequest, fit, make_config
from concept_edit.attacks import probe
from concept_edit.edit.changes import DenseDelta
from concept_edit.evaluation import evaluate, get_suite
from concept_edit.models import load_pipeline

KEY_VALUE = ("to_k.weight", "to_v.weight")
PARTS = {
    "all": lambda target: True,
    "kv": lambda target: target.endswith(KEY_VALUE),
    "qo": lambda target: not target.endswith(KEY_VALUE),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="all,kv,qo")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--seed", type=int, default=TUNING_SEEDS, help="evaluation and attack seeds")
    parser.add_argument("--train-seed", type=int, default=TUNING_SEEDS)
    parser.add_argument("--options", default="", help="the fit's options besides modules x: 'k=v,k=v'")
    parser.add_argument("--budget", type=int, default=None, help="the attack's budget (default: its own)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    parts = args.parts.split(",")
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    if min(args.seed, args.train_seed) < TUNING_SEEDS:
        parser.error(f"this diagnosis runs on the tuning seeds ({TUNING_SEEDS}+), never on the reported ones")
    pipe = load_pipeline("shapes", device="cpu")
    started = time.perf_counter()
    config = make_config("advunlearn", **{**parse_configs(args.options)[0], "modules": "x"})
    edit = fit(pipe, "advunlearn", EditRequest(concepts=("circle",)), config, seed=args.train_seed, progress=False)
    print(f"fit {time.perf_counter() - started:.0f} s", flush=True)
    suite = get_suite("shapes-objects", n=args.n, seed=args.seed)
    changes = list(edit.changes())
    rows = []
    for part in parts:
        kept = [DenseDelta(c.target, c.delta) for c in changes if PARTS[part](c.target)]
        sub = Edit.create(pipe, kept, method="advunlearn", config={"modules": "x", "part": part},
                          request={"concepts": ["circle"]}, seed=args.train_seed)  # fmt: skip
        results, _ = evaluate(pipe, suite, edits=[sub], target="circle", progress=False, compute_baseline=False)
        target, others = _accuracies(results, "circle")
        attacked = probe(pipe, "circle", "soft-prompt", edits=[sub], n=args.n, seed=args.seed, budget=args.budget)
        soft = _share(attacked["successes"], attacked["n"])
        rows.append({"part": part, "tensors": len(kept), "target": target, "others": others, "soft_prompt": soft})
        print(f"{part} ({len(kept)} tensors): circle {_text(target)}, others {_text(others)}, "
              f"soft-prompt {_text(soft)}", flush=True)  # fmt: skip
    if args.json:
        print(json.dumps({"n": args.n, "seed": args.seed, "train_seed": args.train_seed, "options": args.options,
                          "rows": rows}))  # fmt: skip


if __name__ == "__main__":
    main()
