"""One self-contained HTML page from results files: tables, bar charts and before/after image grids.

Runs are grouped by suite. Within a suite, sample images are paired across runs by (prompt, seed), so a
column of the grid shows the same prompt and seed before and after each edit.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from concept_edit.attacks.report import check_probe, erasure_table_section, is_probe, probe_section
from concept_edit.evaluation.evaluate import check_results
from concept_edit.evaluation.metrics import wilson
from concept_edit.io import write_text

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc}h3{font-size:1.05em;margin:1.2em 0 .4em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:3px 9px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.pix{image-rendering:pixelated;width:64px;height:64px;margin:1px;border:1px solid #eee}
.row{display:flex;align-items:center;gap:8px}.lab{width:220px;font-size:.85em;text-align:right}
.wrong{outline:2px solid #d00}.chart{max-width:100%}.note{color:#666;font-size:.9em}
"""


def load_results(paths: Sequence[str | Path], allow_mixed_protocols: bool = False) -> list[dict]:
    """Read and check results files; refuse two evaluation runs of one suite whose protocols differ (other
    seeds, steps, judge or its version: their numbers are not comparable) unless `allow_mixed_protocols`."""
    runs = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read results file {path}: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} is not a concept-edit results file")
        if is_probe(data):
            check_probe(data, str(path))
        elif is_erasure_table(data):
            check_erasure_table(data, str(path))
        else:
            check_results(data, str(path))
        data.setdefault("_file", Path(path).name)
        runs.append(data)
    if not runs:
        raise ValueError("no results files given")
    if not allow_mixed_protocols:
        check_protocols(runs)
    return runs


NOT_COMPARED = {"versions", "transformers", "torch-fidelity", "source"}  # shown, not compared: the weights'
# revision, a detector's package (nudenet) and a data file's hash are compared; where a file was read is not


def comparable_protocol(run: dict) -> dict | None:
    """The part of a run's protocol that must match within a table: library versions and file locations
    are left out (an upgrade of transformers does not change a judge's weights; the same CSV read from two
    paths is the same CSV, by its hash)."""
    protocol = run.get("protocol")
    return None if protocol is None else _without(protocol, NOT_COMPARED)


def _without(value, keys: set[str]):
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    return value


def check_protocols(runs: Sequence[dict]) -> None:
    """ValueError naming both files when two evaluation runs of one suite were made with different protocols."""
    first: dict[str, dict] = {}
    for run in runs:
        protocol = comparable_protocol(run)
        if protocol is None or is_probe(run) or is_erasure_table(run):
            continue
        seen = first.setdefault(run["suite"], run)
        other = comparable_protocol(seen)
        if other != protocol:
            differ = sorted(k for k in other.keys() | protocol.keys() if other.get(k) != protocol.get(k))
            raise ValueError(
                f"{seen['_file']} and {run['_file']} evaluate suite {run['suite']} with different protocols "
                f"({', '.join(differ)} differ): their figures are not comparable. Re-run one, or pass "
                "--allow-mixed-protocols to put them in one table anyway"
            )


def run_label(run: dict) -> str:
    names = run.get("edit_names") or [Path(e).parent.name or e for e in run.get("edits", [])]
    return run["model"] + (" + " + " + ".join(names) if names else " (unedited)")


def build_report(runs: list[dict], title: str = "concept-edit report") -> str:
    """Evaluation runs grouped by suite, then probe (attack) runs, then erasure-table rows, in one page."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
    ]
    probes = [r for r in runs if is_probe(r)]
    tables = [row for r in runs if is_erasure_table(r) for row in r["rows"]]
    runs = [r for r in runs if not is_probe(r) and not is_erasure_table(r)]
    suites = list(dict.fromkeys(r["suite"] for r in runs))
    if runs:
        parts.append(
            "<p class='note'>Runs: "
            + "; ".join(f"{html.escape(run_label(r))} [{html.escape(r['_file'])}]" for r in runs)
            + "</p>"
        )
    for suite in suites:
        group = [r for r in runs if r["suite"] == suite]
        parts.append(f"<h2>Suite {html.escape(suite)}</h2>")
        parts.append(_summary_html(group))
        parts.append(_concept_table(group))
        parts.append(_img(_accuracy_chart(group), "per-concept accuracy chart", "chart"))
        if any("distribution" in r for r in group):
            parts.append(_distribution_section(group))
        parts.append(_grids(group))
    parts.append(probe_section(probes))
    parts.append(erasure_table_section(tables))
    parts.append("</body></html>")
    return "\n".join(parts)


def is_erasure_table(data: dict) -> bool:
    """The JSON line of `benchmarks/erasure_table.py --json`: {"rows": [{"method", "concept", ...}, ...]}."""
    return isinstance(data.get("rows"), list) and "per_concept" not in data


def check_erasure_table(data: dict, source: str) -> None:
    for i, row in enumerate(data["rows"]):
        if not isinstance(row, dict) or not {"method", "concept"} <= row.keys():
            raise ValueError(f"{source}: rows[{i}] needs a method and a concept (an erasure_table.py --json line)")


def write_report(paths: Sequence[str | Path], out: str | Path, allow_mixed_protocols: bool = False) -> Path:
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give an .html file name")
    runs = load_results(paths, allow_mixed_protocols)
    write_text(out, build_report(runs))
    return out


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and np.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else html.escape(str(value))


def _summary_html(group: list[dict]) -> str:
    cols = [
        ("mean accuracy", lambda r: r.get("mean_accuracy")),
        ("target", lambda r: r.get("target")),
        ("target accuracy", lambda r: r.get("target_accuracy")),
        ("others accuracy", lambda r: r.get("others_accuracy")),
        ("read as none", lambda r: r.get("none_share")),
        ("Frechet to renders", lambda r: r.get("frechet_to_renders")),
        ("Frechet to real images", lambda r: r.get("frechet_to_real")),
        ("Frechet to unedited", lambda r: r.get("frechet_to_unedited")),
        ("image change", lambda r: (r.get("image_change") or {}).get("mean")),
        ("CLIP score", lambda r: r.get("clip_score")),
        ("mean deviation", lambda r: r.get("mean_deviation")),
    ]
    cols = [c for c in cols if any(c[1](r) is not None for r in group)]
    head = "".join(f"<th>{name}</th>" for name, _ in cols)
    rows = "".join(
        f"<tr><td>{html.escape(run_label(r))}</td>" + "".join(f"<td>{_fmt(get(r))}</td>" for _, get in cols) + "</tr>"
        for r in group
    )
    metric = next((r["image_change"]["metric"] for r in group if r.get("image_change")), None)
    note = (
        f"<p class='note'>image change: {html.escape(metric)} against the unedited model, same prompts and seeds.</p>"
        if metric
        else ""
    )
    extras = (
        _protocol_note(group)
        + _runs_by_key(group, "judge_summary", "The judge's figures")
        + _runs_by_key(group, "image_change_per_group", "Image change per group")
    )
    return f"<table><tr><th>run</th>{head}</tr>{rows}</table>{note}{extras}"


def _protocol_note(group: list[dict]) -> str:
    protocols = [r["protocol"] for r in group if r.get("protocol")]
    if not protocols:
        return ""
    p = protocols[0]
    judge = ", ".join(f"{k} {v}" for k, v in (p.get("judge") or {}).items())
    text = f"protocol: {p['entries']} images, seeds {p['seeds'][0]}–{p['seeds'][1]}, {p['steps']} steps, "
    text += f"guidance {p['guidance']}, {p['resolution']} px; judge: {judge}"
    if any(comparable_protocol(r) != comparable_protocol(group[0]) for r in group if r.get("protocol")):
        text += " — <b>the runs' protocols differ (allowed by the user): compare with care</b>"
    return f"<p class='note'>{html.escape(text) if '<b>' not in text else text}</p>"


def _runs_by_key(group: list[dict], field: str, title: str) -> str:
    """A table of one dict-valued results field, one row per run and one column per key (empty if absent)."""
    runs = [r for r in group if r.get(field)]
    if not runs:
        return ""
    keys = list(dict.fromkeys(k for r in runs for k in r[field]))
    rows = "".join(
        f"<tr><td>{html.escape(run_label(r))}</td>"
        + "".join(f"<td>{_fmt(_scalar(r[field].get(k)))}</td>" for k in keys)
        + "</tr>"
        for r in runs
    )
    heads = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    return f"<h3>{title}</h3><table><tr><th>run</th>{heads}</tr>{rows}</table>"


def _scalar(value):
    """Numbers as they are; a nested figure (counts per class) as compact text."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return value


def _concept_table(group: list[dict]) -> str:
    concepts = list(dict.fromkeys(c for r in group for c in r["per_concept"]))
    head = "".join(f"<th>{html.escape(run_label(r))}</th>" for r in group)
    rows = []
    for concept in concepts:
        cells = []
        for r in group:
            v = r["per_concept"].get(concept)
            none = f" none {v['none_share']:.2f}" if v and v.get("none_share") else ""
            change = (r.get("image_change_per_concept") or {}).get(concept)
            change = f" change {change:.3f}" if change is not None else ""
            if v and "accuracy" in v:
                note = f"{_interval(v)} n={v['n']}{none}{change}"
                cells.append(f"<td>{_fmt(v['accuracy'], 2)} <span class='note'>{note}</span></td>")
            else:
                cells.append(f"<td>– <span class='note'>n={v['n']}{change}</span></td>" if v else "<td>–</td>")
        rows.append(f"<tr><td>{html.escape(concept)}</td>{''.join(cells)}</tr>")
    title = "Per concept (the judge's accuracy; image change against the unedited model)"
    return f"<h3>{title}</h3><table><tr><th>concept</th>{head}</tr>{''.join(rows)}</table>"


def _figure_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _accuracy_chart(group: list[dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    concepts = list(dict.fromkeys(c for r in group for c in r["per_concept"]))
    x = np.arange(len(concepts))
    width = 0.8 / len(group)
    fig, ax = plt.subplots(figsize=(max(6, len(concepts) * 0.9), 3))
    for i, r in enumerate(group):
        values = [r["per_concept"].get(c, {}).get("accuracy", np.nan) for c in concepts]
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=run_label(r))
    ax.set_xticks(x, concepts, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("judge accuracy")
    ax.legend(fontsize=8, loc="lower right")
    return _figure_png(fig)


def _distribution_section(group: list[dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from concept_edit.shapes.world import COLORS

    runs = [r for r in group if "distribution" in r]
    concepts = list(dict.fromkeys(c for r in runs for c in r["distribution"]))
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 2.8), squeeze=False)
    for ax, r in zip(axes[0], runs, strict=True):
        bottom = np.zeros(len(concepts))
        attributes = list(next(iter(r["distribution"].values())))
        for a in attributes:
            vals = np.array([r["distribution"].get(c, {}).get(a, 0.0) for c in concepts])
            color = np.array(COLORS[a]) / 255 if a in COLORS else None
            ax.bar(concepts, vals, bottom=bottom, color=color, edgecolor="#555", linewidth=0.3, label=a)
            bottom += vals
        ax.set_title(run_label(r), fontsize=8)
        ax.set_ylim(0, 1)
    axes[0][-1].legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    rows = "".join(
        f"<tr><td>{html.escape(run_label(r))}</td>"
        + "".join(f"<td>{_fmt(r['deviation'].get(c))}</td>" for c in concepts)
        + "</tr>"
        for r in runs
    )
    table = (
        "<table><tr><th>deviation from uniform (UCE's Δ)</th>"
        + "".join(f"<th>{html.escape(c)}</th>" for c in concepts)
        + f"</tr>{rows}</table>"
    )
    return "<h3>Attribute distribution</h3>" + _img(_figure_png(fig), "attribute distribution", "chart") + table


def _grids(group: list[dict]) -> str:
    if not any(r.get("samples") for r in group):
        return ""
    out = [
        "<h3>Samples: same prompts and seeds in every run</h3>",
        "<p class='note'>Outlined in red: the judge does not see the expected concept (hover for its reading).</p>",
    ]
    concepts = list(dict.fromkeys(c for r in group for c in r.get("samples", {})))
    for concept in concepts:
        keys = list(
            dict.fromkeys((s["prompt"], s["seed"]) for r in group for s in r.get("samples", {}).get(concept, []))
        )
        out.append(
            f"<p><b>{html.escape(concept)}</b> <span class='note'>"
            + "; ".join(f"{html.escape(p)} (seed {s})" for p, s in keys)
            + "</span></p>"
        )
        for r in group:
            by_key = {(s["prompt"], s["seed"]): s for s in r.get("samples", {}).get(concept, [])}
            cells = []
            for key in keys:
                sample = by_key.get(key)
                if sample is None:
                    cells.append("<span class='pix'></span>")
                    continue
                correct = sample["predicted"] in (concept, None)  # None: a metric-only judge gave no reading
                alt = f"{key[0]} seed {key[1]}" + ("" if correct else f" (judge: {sample['predicted']})")
                cells.append(_img(sample["png"], alt, "pix" if correct else "pix wrong"))
            out.append(f"<div class='row'><span class='lab'>{html.escape(run_label(r))}</span>{''.join(cells)}</div>")
    return "\n".join(out)


def _img(b64png: str, alt: str, cls: str) -> str:
    return (
        f"<img class='{cls}' alt='{html.escape(alt)}' title='{html.escape(alt)}' src='data:image/png;base64,{b64png}'>"
    )


def summary_table(runs: list[dict]) -> str:
    """Per-concept accuracy, one column per run, then the headline metrics."""
    labels = [run_label(r) for r in runs]
    concepts = list(dict.fromkeys(c for r in runs for c in r["per_concept"]))
    width = max(18, *(len(c) for c in concepts))
    col = max(24, *(min(len(label), 28) for label in labels))
    lines = [f"{'concept':<{width}}  " + "  ".join(f"{label[:28]:>{col}}" for label in labels)]
    for c in concepts:
        cells = [f"{_with_interval(r['per_concept'].get(c)):>{col}}" for r in runs]
        lines.append(f"{c:<{width}}  " + "  ".join(cells))
    rows = [
        ("mean accuracy", "mean_accuracy"),
        ("target accuracy", "target_accuracy"),
        ("others accuracy", "others_accuracy"),
        ("read as none", "none_share"),
        ("Frechet to renders", "frechet_to_renders"),
        ("Frechet to real images", "frechet_to_real"),
        ("CLIP score", "clip_score"),
        ("mean deviation", "mean_deviation"),
    ]
    for name, key in rows:
        if any(r.get(key) is not None for r in runs):
            cells = [f"{r[key]:>{col}.3f}" if r.get(key) is not None else f"{'-':>{col}}" for r in runs]
            lines.append(f"{name:<{width}}  " + "  ".join(cells))
    for c in dict.fromkeys(c for r in runs for c in r.get("deviation", {})):  # bias suite: each concept's delta
        cells = [f"{r['deviation'][c]:>{col}.3f}" if c in r.get("deviation", {}) else f"{'-':>{col}}" for r in runs]
        lines.append(f"{'deviation ' + c:<{width}}  " + "  ".join(cells))
    if any("image_change" in r for r in runs):
        metric = next(r["image_change"]["metric"] for r in runs if "image_change" in r)
        cells = [f"{r['image_change']['mean']:>{col}.3f}" if "image_change" in r else f"{'-':>{col}}" for r in runs]
        lines.append(f"{'image change':<{width}}  " + "  ".join(cells) + f"   ({metric})")
    return "\n".join(lines)


def _interval(row: dict) -> str:
    """ "[0.47, 0.87]" from a per-concept row's 95% interval (computed here for results files that lack one)."""
    low, high = row.get("ci95") or wilson(round(row["accuracy"] * row["n"]), row["n"])
    return f"[{low:.2f}, {high:.2f}]"


def _with_interval(row: dict | None) -> str:
    if row is None:
        return "-"
    if "accuracy" not in row:  # a metric-only suite: no accuracy to show
        return f"n={row['n']}"
    return f"{row['accuracy']:.2f} {_interval(row)} n={row['n']}"
