"""The report's section for probe results (`kind: "probe"`): one table row per attack, then what each found.

`probe_section(runs)` returns an HTML fragment styled by the report's CSS (tables, `.note`); the report
wires it in for results files that `is_probe(data)` recognises (their shape differs from evaluation
results, which `check_probe` checks instead).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

ROWS_SHOWN = 6  # attack prompts listed per run


def is_probe(data: dict) -> bool:
    return isinstance(data, dict) and data.get("kind") == "probe"


def check_probe(data: dict, source: str = "results") -> None:
    """ValueError naming the file and the field unless `data` has the shape `probe` writes."""
    for key in ("attack", "concept", "model", "protocol", "prompts", "unedited", "edited_no_attack", "ci95"):
        if key not in data:
            raise ValueError(f"{source} is not a probe results file (missing {key!r})")
    for key in ("attack_success_rate",):
        value = data.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool) or not (0 <= value <= 1):
            raise ValueError(f"{source}: {key!r} must be a number in [0, 1], got {value!r}")
    if not isinstance(data.get("n"), int) or data["n"] < 1:
        raise ValueError(f"{source}: 'n' must be a positive integer")
    if not isinstance(data["prompts"], list):
        raise ValueError(f"{source}: 'prompts' must be a list")


def _share(rate: float, ci: Sequence[float] | None = None, k: int | None = None, n: int | None = None) -> str:
    if not isinstance(rate, int | float) or not math.isfinite(rate):
        return "–"
    text = f"{rate:.2f}"
    if ci:
        text += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
    if k is not None and n is not None:
        text += f" ({k}/{n})"
    return text


def _cell(value) -> str:
    return f"<td>{html.escape(str(value))}</td>"


def probe_section(runs: Sequence[dict]) -> str:
    """HTML: a table of every probe run, then the first prompts each attack tried or found."""
    if not runs:
        return ""
    head = (
        "<tr><th>attack</th><th>concept</th><th>model + edits</th><th>attack success [95% CI] (k/n)</th>"
        "<th>no attack</th><th>unedited model</th><th>budget</th><th>seed</th></tr>"
    )
    rows = []
    for run in runs:
        protocol = run.get("protocol", {})
        edits = " + ".join(run.get("edit_names") or run.get("edits") or []) or "(unedited)"
        budget = f"{protocol.get('budget')} {protocol.get('budget_unit', '')}".strip()
        rows.append(
            "<tr>"
            + _cell(run["attack"])
            + _cell(run["concept"])
            + _cell(f"{run['model']} + {edits}")
            + _cell(_share(run["attack_success_rate"], run.get("ci95"), run.get("successes"), run.get("n")))
            + _cell(_share(run["edited_no_attack"].get("rate"), run["edited_no_attack"].get("ci95")))
            + _cell(_share(run["unedited"].get("rate"), run["unedited"].get("ci95")))
            + _cell(budget)
            + _cell(protocol.get("seed"))
            + "</tr>"
        )
    parts = [
        "<h2>Attacks</h2>",
        "<p class='note'>Share of attack images the judge reads as the erased concept (Wilson 95% interval); "
        "'no attack' is the edited model on the concept's own prompts, 'unedited' the model before the edit.</p>",
        f"<table>{head}{''.join(rows)}</table>",
    ]
    for run in runs:
        judge = run.get("judge", "")
        parts.append(f"<h3>{html.escape(run['attack'])} on {html.escape(repr(run['concept']))}</h3>")
        parts.append(f"<p class='note'>judge: {html.escape(str(judge))}</p>")
        extra = []
        if "discrete_success_rate" in run:
            extra.append(f"nearest-token prompts succeed {run['discrete_success_rate']:.2f}")
        if "unedited_success_rate" in run:
            extra.append(f"the unedited model reads these prompts as the concept {run['unedited_success_rate']:.2f}")
        if run.get("best_of_k") is not None:
            extra.append(
                f"best of {run['best_of_k']} judge reads during the search {run['best_of_k_success_rate']:.2f} "
                "(selected on the judge; not the success rate)"
            )
        for key, name in (("given_unedited", "where the unedited model draws the concept"),
                          ("without_concept_words", "prompts without the concept's words or synonyms")):  # fmt: skip
            cell = run.get(key)
            if cell:
                extra.append(f"{name}: {_share(cell['rate'], cell.get('ci95'), cell.get('successes'), cell.get('n'))}")
        level = run.get("prompt_level")
        if level and level.get("ci95_prompt_level"):
            low, high = level["ci95_prompt_level"]
            extra.append(f"{level['prompts']} distinct prompts; prompt-level 95% CI [{low:.2f}, {high:.2f}]")
        if extra:
            parts.append(f"<p class='note'>{html.escape('; '.join(extra))}</p>")
        body = []
        for row in run["prompts"][:ROWS_SHOWN]:
            shown = row.get("discrete_prompt") or row.get("prompt", "")
            if row.get("nearest_tokens") is not None:
                shown = f"[{' '.join(row['nearest_tokens'])}] {row.get('prompt', '')}"
            body.append(
                "<tr>"
                + _cell(shown)
                + _cell(row.get("seed"))
                + _cell(row.get("read"))
                + _cell("yes" if row.get("success") else "no")
                + "</tr>"
            )
        more = len(run["prompts"]) - ROWS_SHOWN
        parts.append(
            "<table><tr><th>prompt (soft-prompt: nearest tokens of the free embeddings)</th><th>seed</th>"
            f"<th>judge read</th><th>concept</th></tr>{''.join(body)}</table>"
            + (f"<p class='note'>... and {more} more in the results file</p>" if more > 0 else "")
        )
    return "\n".join(parts)


def _attack(row: dict, attack: str) -> str:
    cell = (row.get("attacks") or {}).get(attack)
    if cell and "refused" in cell:
        return "refused"
    if cell and "rate" in cell:
        plain = cell.get("edited_no_attack") or {}
        without = f"; without attack {plain['successes']}/{plain['n']}" if "successes" in plain else ""
        return _share(cell["rate"], cell.get("ci95"), cell.get("successes"), cell.get("n")) + without
    return _share(row.get("attack_success", {}).get(attack))


def erasure_table_section(rows: Sequence[dict]) -> str:
    """HTML: the rows of `benchmarks/erasure_table.py --json` (one per method and concept) as one table."""
    if not rows:
        return ""
    attacks = list(dict.fromkeys(a for r in rows for a in [*r.get("attack_success", {}), *r.get("attacks", {})]))
    head = ["method", "concept", "target", "others", "synonyms", "Frechet to renders", "image change"]
    head += [f"{a} success" for a in attacks] + ["fit (s)", "edit (KB)"]
    body = []
    for r in rows:
        if "refused" in r:
            cells = [r.get("method", ""), r.get("concept", ""), f"refused: {r['refused']}"]
            body.append("<tr>" + "".join(_cell(c) for c in cells) + "</tr>")
            continue
        target, others = r.get("target") or {}, r.get("others") or {}
        change = r.get("image_change") or {}
        cells = [
            r.get("method", ""),
            r.get("concept", ""),
            _share(r.get("target_accuracy"), target.get("ci95")),
            _share(r.get("others_accuracy"), others.get("ci95")),
            _share((r.get("paraphrase") or {}).get("accuracy")),
            f"{r['frechet_to_renders']:.1f}" if isinstance(r.get("frechet_to_renders"), int | float) else "–",
            f"{change['mean']:.3f}" if isinstance(change.get("mean"), int | float) else "–",
            *[_attack(r, a) for a in attacks],
            r.get("fit_s", ""),
            f"{r['edit_bytes'] / 1024:.0f}" if isinstance(r.get("edit_bytes"), int) else "",
        ]
        body.append("<tr>" + "".join(_cell(c) for c in cells) + "</tr>")
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return (
        "<h2>Erasure methods compared</h2><p class='note'>Each method at its documented default on ShapesSD; "
        "accuracies are the oracle's readings with Wilson 95% intervals; attack success is the share of attack "
        "images read as the concept, beside the edited model's own reading of the plain concept prompt (an attack "
        f"only means something where that is low).</p><table><tr>{header}</tr>{''.join(body)}</table>"
    )
