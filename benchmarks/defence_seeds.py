"""How often one fit of a defence meets the circle bar, read from the tuning runs already recorded (no fitting).

    python benchmarks/defence_seeds.py [--file benchmarks/results/advunlearn_tuning.json]
        [--family 'null-space variants=ab,ac,ad,...'] [--json]

A 16-prompt attack figure moves by several prompts between training seeds of one configuration, so a single
fit that meets the bar says little. This groups the recorded tuning runs (n 16 per object and per attack,
suite and attack seeds 5000+) by configuration across training seeds, and by any `--family` of named runs, and
prints for each group: the runs and training seeds, the pooled erased-concept, other-object and soft-prompt
(and random-prefix, where measured) shares with Wilson 95% intervals, and how many of its fits met the bar
(erased concept <= 1/16, others within 0.03 of the unedited model's, soft-prompt <= 3/16). The last line with
--json is {"groups": [...], "bar": {...}}.
"""

from __future__ import annotations

import argparse
import json
from fractions import Fraction
from pathlib import Path

from concept_edit.evaluation.metrics import wilson

RESULTS = Path(__file__).parent / "results"
BAR = {"target_max": Fraction(1, 16), "others_within": Fraction(3, 100), "soft_prompt_max": Fraction(3, 16)}


def _meets_bar(row: dict) -> bool:
    """Exact, in counts: target k/n <= 1/16, others k/n >= unedited k/n - 3/100, soft-prompt k/n <= 3/16."""
    soft = row.get("attacks", {}).get("soft-prompt")
    share = lambda cell: Fraction(cell["successes"], cell["n"])  # noqa: E731
    return (soft is not None and share(row["target"]) <= BAR["target_max"]
            and share(row["others"]) >= share(row["unedited"]["others"]) - BAR["others_within"]
            and share(soft) <= BAR["soft_prompt_max"])  # fmt: skip


def _pooled(rows: list[dict], pick) -> dict | None:
    cells = [pick(r) for r in rows]
    cells = [c for c in cells if c is not None]
    if not cells:
        return None
    k, n = sum(c["successes"] for c in cells), sum(c["n"] for c in cells)
    return {"successes": k, "n": n, "rate": k / n, "ci95": [round(v, 4) for v in wilson(k, n)], "runs": len(cells)}


def summarise(name: str, rows: list[dict], default_seed: int) -> dict:
    return {
        "group": name,
        "runs": [r.get("run") for r in rows],
        "train_seeds": [r.get("train_seed", default_seed) for r in rows],
        "target": _pooled(rows, lambda r: r["target"]),
        "others": _pooled(rows, lambda r: r["others"]),
        "soft-prompt": _pooled(rows, lambda r: r.get("attacks", {}).get("soft-prompt")),
        "random-prefix": _pooled(rows, lambda r: r.get("attacks", {}).get("random-prefix")),
        "met_bar": sum(_meets_bar(r) for r in rows),
    }


def _text(cell: dict | None) -> str:
    if cell is None:
        return "-"
    low, high = cell["ci95"]
    return f"{cell['successes']}/{cell['n']} {cell['rate']:.2f} [{low:.2f}, {high:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=RESULTS / "advunlearn_tuning.json")
    parser.add_argument("--family", action="append", default=[],
                        help="'name=run,run,...': pool these named runs as one group (repeatable)")  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    data = json.loads(args.file.read_text())
    rows = [r for r in data["rows"] if r.get("run") and r.get("n", data.get("n")) == 16]
    default_seed = data.get("train_seed")
    by_options: dict[str, list[dict]] = {}
    for row in rows:
        by_options.setdefault(json.dumps(row["options"], sort_keys=True), []).append(row)
    groups = [summarise(key, group, default_seed) for key, group in by_options.items() if len(group) > 1]
    named = {r["run"]: r for r in rows}
    for spec in args.family:
        name, _, labels = spec.partition("=")
        missing = [label for label in labels.split(",") if label not in named]
        if missing or not labels:
            parser.error(f"--family {name!r}: no recorded run named {', '.join(missing) or '(none given)'}")
        groups.append(summarise(name, [named[label] for label in labels.split(",")], default_seed))
    for g in groups:
        print(f"{g['group']}\n  runs {','.join(g['runs'])} (training seeds {sorted(set(g['train_seeds']))}): "
              f"circle {_text(g['target'])}; others {_text(g['others'])}; soft-prompt {_text(g['soft-prompt'])}; "
              f"random-prefix {_text(g['random-prefix'])}; met the bar {g['met_bar']} of {len(g['runs'])}")  # fmt: skip
    if args.json:
        print(json.dumps({"file": args.file.name, "bar": {k: str(v) for k, v in BAR.items()}, "groups": groups}))


if __name__ == "__main__":
    main()
