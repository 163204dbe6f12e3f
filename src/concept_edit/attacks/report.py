"""The report's section for probe results (`kind: "probe"`): one table row per attack, then what each found.

`probe_section(runs)` returns an HTML fragment styled by the report's CSS (tables, `.note`); this module
registers it, and the erasure table's, as report sections (`evaluation.report.register_section`) for the results
files `is_probe` and `is_erasure_table` recognise; the report finds it by the `concept_edit.report_sections`
entry point.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from concept_edit.evaluation.report import Section, describe, register_section

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


ATTACKS_TEST = (
    "whether an erased concept comes back: each attack looks for prompts the edit was not given (paraphrase: "
    "other wordings; soft-prompt: free token embeddings optimised against the edit; ring-a-bell: a concept vector "
    "added to the prompt), and the judge reads each image it draws."
)
PROBE_DEFINITIONS = {
    "attack success": "the share of the attack's images the judge reads as the erased concept, k/n, with its "
    "Wilson 95% interval (lower: the erasure holds).",
    "no attack": "the same share for the edited model on the concept's own prompts: an attack only adds something "
    "where this is low.",
    "unedited model": "the same share before the edit (the concept was there to erase).",
    "budget": "how much search the attack was given; the papers' budgets are larger, so the rates are lower bounds.",
}
TABLE_DEFINITIONS = {
    "target": "the erased concept's accuracy on its suite (the share of its images the oracle reads as it), "
    "[95% interval], and before the edit.",
    "others": "the mean accuracy of the suite's other concepts, which the edit should keep, and before the edit.",
    "synonyms": "the erased object's accuracy on its true synonyms (shapes-paraphrase: wordings the edit was not "
    "given).",
    "Frechet to renders": "Fréchet distance of oracle features to true renders of the same prompts (lower: closer).",
    "image change": "mean distance of each image to the unedited model's image of the same prompt and seed.",
    "… success": "the share of that attack's images read as the concept (k/n, [95% interval]), beside the edited "
    "model's reading of the plain concept prompts without the attack.",
}


def _definitions(items: dict[str, str]) -> str:
    body = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in items.items())
    return f"<dl class='defs'>{body}</dl>"


def probe_sentence(run: dict) -> str:
    """One sentence per probe run: the attack, the model and edit, and what the judge read, with intervals."""
    who = describe(run["model"], run.get("edit_names") or [])
    k, n = run.get("successes"), run.get("n")
    counts = f"{k}/{n} of its images" if k is not None else f"{run['attack_success_rate']:.2f} of its images"
    text = (
        f"the judge read {counts} as {run['concept']!r} ({_share(run['attack_success_rate'], run.get('ci95'))}), "
        f"against {_share(run['edited_no_attack'].get('rate'), run['edited_no_attack'].get('ci95'))} without the "
        f"attack and {_share(run['unedited'].get('rate'), run['unedited'].get('ci95'))} in the unedited model"
    )
    return f"<b>{html.escape(run['attack'])} attack on {html.escape(who)}</b>: {html.escape(text)}."


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
        f"<p class='tests'>What it tests: {html.escape(ATTACKS_TEST)}</p>",
        "<ul class='lead'>" + "".join(f"<li>{probe_sentence(run)}</li>" for run in runs) + "</ul>",
        f"<table>{head}{''.join(rows)}</table>",
        _definitions(PROBE_DEFINITIONS),
    ]
    for run in runs:
        judge = run.get("judge", "")
        parts.append(f"<h3>{html.escape(run['attack'])} on {html.escape(repr(run['concept']))}</h3>")
        parts.append(f"<p class='note'>the judge: {html.escape(str(judge))}</p>")
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


def _two(main: str, below: str = "") -> str:
    """A table cell: the figure on one line, its counts and interval in small print below."""
    small = f"<br><span class='note'>{html.escape(below)}</span>" if below else ""
    return f"<td><span class='nw'>{html.escape(main)}</span>{small}</td>"


def _attack(row: dict, attack: str) -> str:
    cell = (row.get("attacks") or {}).get(attack)
    if cell and "refused" in cell:
        return _two("refused")
    if cell and "rate" in cell:
        plain = cell.get("edited_no_attack") or {}
        counts = f"{cell['successes']}/{cell['n']}" if "successes" in cell and "n" in cell else ""
        without = f"no attack {plain['successes']}/{plain['n']}" if "successes" in plain else ""
        return _two(_share(cell["rate"], cell.get("ci95")), "; ".join(t for t in (counts, without) if t))
    return _two(_share(row.get("attack_success", {}).get(attack)))


def _with_before(row: dict, key: str, cell_key: str) -> str:
    """'0.25 [0.10, 0.49]' with 'before 1.00' below, from an erasure-table row."""
    before = (row.get(f"{cell_key}_before") or {}).get("accuracy")
    below = f"before {before:.2f}" if isinstance(before, int | float) else ""
    return _two(_share(row.get(key), (row.get(cell_key) or {}).get("ci95")), below)


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
        change = r.get("image_change") or {}
        synonyms = r.get("paraphrase") or {}
        cells = [
            _cell(r.get("method", "")),
            _cell(r.get("concept", "")),
            _with_before(r, "target_accuracy", "target"),
            _with_before(r, "others_accuracy", "others"),
            _two(
                _share(synonyms.get("accuracy")), f"{_interval(synonyms)} n={synonyms['n']}" if "n" in synonyms else ""
            ),
            _cell(f"{r['frechet_to_renders']:.1f}" if isinstance(r.get("frechet_to_renders"), int | float) else "–"),
            _cell(f"{change['mean']:.3f}" if isinstance(change.get("mean"), int | float) else "–"),
            *[_attack(r, a) for a in attacks],
            _cell(r.get("fit_s", "")),
            _cell(f"{r['edit_bytes'] / 1024:.0f}" if isinstance(r.get("edit_bytes"), int) else ""),
        ]
        body.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return (
        "<h2>Erasure methods compared</h2><p class='tests'>What it tests: each erasure method at its documented "
        "default on ShapesSD, one row per erased concept: how much of the concept is gone, what the other concepts "
        "keep, and whether attacks bring it back (the oracle reads every image).</p>"
        f"<table class='wide'><tr>{header}</tr>{''.join(body)}</table>{_definitions(TABLE_DEFINITIONS)}"
    )


def _interval(cell: dict) -> str:
    ci = cell.get("ci95")
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""


def is_erasure_table(data: dict) -> bool:
    """The JSON line of `benchmarks/erasure_table.py --json`: {"rows": [{"method", "concept", ...}, ...]}."""
    return isinstance(data.get("rows"), list) and "per_concept" not in data


def check_erasure_table(data: dict, source: str) -> None:
    for i, row in enumerate(data["rows"]):
        if not isinstance(row, dict) or not {"method", "concept"} <= row.keys():
            raise ValueError(f"{source}: rows[{i}] needs a method and a concept (an erasure_table.py --json line)")


register_section(Section("probe", is_probe, check_probe, probe_section))
register_section(Section("erasure-table", is_erasure_table, check_erasure_table,
                         lambda runs: erasure_table_section([row for r in runs for row in r["rows"]])))  # fmt: skip
