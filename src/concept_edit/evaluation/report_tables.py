"""The report's tables: a suite's headline table (`summary_html`, with its protocol and the judge's figures),
the per-concept table (`concept_table`), and the plain-text summary the CLI prints (`summary_table`)."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

from concept_edit.evaluation.report_text import Glossary, fmt, interval, others_mean, run_label


def _target_cell(run: dict, target: str) -> str:
    row = run["per_concept"].get(target) or {}
    if "accuracy" not in row:
        return "–"
    k = round(row["accuracy"] * row["n"])
    return f"{row['accuracy']:.2f} <span class='note'>{interval(row)} {k}/{row['n']}</span>"


def summary_html(group: list[dict], targets: Sequence[str], glossary: Glossary, mixed_protocols: bool = False) -> str:
    """The suite's headline table, one row per run, then its protocol (`mixed_protocols`: the runs'
    protocols differ, allowed by the user) and the judge's and the image change's tables."""
    cols: list[tuple[str, str, Callable[[dict], str]]] = []  # (header, metric defined, cell)
    for t in targets:
        if any("accuracy" in (r["per_concept"].get(t) or {}) for r in group):  # not on a metric-only suite
            cols.append((f"target accuracy<br>{html.escape(t)}", "target accuracy", lambda r, t=t: _target_cell(r, t)))
    others = "others' mean accuracy" if targets else "mean accuracy"
    if any(others_mean(r, targets) for r in group):
        cols.append((others, others, lambda r: fmt((others_mean(r, targets) or (None,))[0])))
    plain = [
        ("read as none", lambda r: r.get("none_share")),
        ("Frechet to renders", lambda r: r.get("frechet_to_renders")),
        ("Frechet to real images", lambda r: r.get("frechet_to_real")),
        ("Frechet to unedited", lambda r: r.get("frechet_to_unedited")),
        ("image change", lambda r: (r.get("image_change") or {}).get("mean")),
        ("CLIP score", lambda r: r.get("clip_score")),
        ("mean deviation", lambda r: r.get("mean_deviation")),
    ]
    cols += [
        (name, name, lambda r, get=get: fmt(get(r))) for name, get in plain if any(get(r) is not None for r in group)
    ]
    head = "".join(f"<th>{name}</th>" for name, _, _ in cols)
    rows = "".join(
        f"<tr><td>{html.escape(run_label(r))}</td>" + "".join(f"<td>{cell(r)}</td>" for _, _, cell in cols) + "</tr>"
        for r in group
    )
    metric = next((r["image_change"]["metric"] for r in group if r.get("image_change")), None)
    judged = any("accuracy" in name for _, name, _ in cols)
    defined = glossary.define([*(["accuracy"] if judged else []), *(name for _, name, _ in cols)], metric)
    extras = (
        _protocol_note(group, mixed_protocols)
        + _runs_by_key(group, "judge_summary", "The judge's figures")
        + _runs_by_key(group, "image_change_per_group", "Image change per group")
    )
    return f"<table><tr><th>run</th>{head}</tr>{rows}</table>{defined}{extras}"


def _protocol_note(group: list[dict], mixed_protocols: bool) -> str:
    protocols = [r["protocol"] for r in group if r.get("protocol")]
    if not protocols:
        return ""
    p = protocols[0]
    text = f"protocol: {p['entries']} images, seeds {p['seeds'][0]}–{p['seeds'][1]}, {p['steps']} steps, "
    text += f"guidance {p['guidance']}, {p['resolution']} px; judge: {_describe(p.get('judge'), 'judge')}"
    if p.get("features"):
        text += f"; features: {_describe(p['features'], 'features')}"
    text = html.escape(text)
    if mixed_protocols:
        text += " — <b>the runs' protocols differ (allowed by the user): compare with care</b>"
    return f"<p class='note'>{text}</p>"


def _describe(part, name_key: str) -> str:
    """{"judge": "shapes-oracle", "weights": "oracle.safetensors"} -> "shapes-oracle (weights oracle.safetensors)"."""
    if not isinstance(part, dict):
        return str(part) if part else "none"
    name = part.get(name_key, "?")
    rest = ", ".join(f"{k} {_scalar(v)}" for k, v in part.items() if k != name_key)
    return f"{name} ({rest})" if rest else str(name)


def _runs_by_key(group: list[dict], field: str, title: str) -> str:
    """A table of one dict-valued results field, one row per run and one column per key (empty if absent)."""
    runs = [r for r in group if r.get(field)]
    if not runs:
        return ""
    keys = list(dict.fromkeys(k for r in runs for k in r[field]))
    rows = "".join(
        f"<tr><td>{html.escape(run_label(r))}</td>"
        + "".join(f"<td>{fmt(_scalar(r[field].get(k)))}</td>" for k in keys)
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


def concept_table(group: list[dict], targets: Sequence[str], glossary: Glossary) -> str:
    concepts = list(dict.fromkeys(c for r in group for c in r["per_concept"]))
    concepts = [c for c in targets if c in concepts] + [c for c in concepts if c not in targets]
    head = "".join(f"<th>{html.escape(run_label(r))}</th>" for r in group)
    rows, used = [], set()
    for concept in concepts:
        cells = []
        for r in group:
            v = r["per_concept"].get(concept)
            none = f" none {v['none_share']:.2f}" if v and v.get("none_share") else ""
            change = (r.get("image_change_per_concept") or {}).get(concept)
            change = f" change {change:.3f}" if change is not None else ""
            used.update(name for name, text in (("none", none), ("change", change)) if text)
            if v and "accuracy" in v:
                k = round(v["accuracy"] * v["n"])
                note = f"{interval(v)} {k}/{v['n']}{none}{change}"
                cells.append(f"<td>{fmt(v['accuracy'], 2)} <span class='note'>{note}</span></td>")
            else:
                cells.append(f"<td>– <span class='note'>n={v['n']}{change}</span></td>" if v else "<td>–</td>")
        name = html.escape(concept) + (" <b>(target)</b>" if concept in targets else "")
        rows.append(f"<tr{' class=tgt' if concept in targets else ''}><td>{name}</td>{''.join(cells)}</tr>")
    title = "Per concept (the judge's accuracy" + ("; edited concepts first)" if targets else ")")
    defined = glossary.define([n for n in ("none", "change") if n in used])
    return f"<h3>{title}</h3><table><tr><th>concept</th>{head}</tr>{''.join(rows)}</table>{defined}"


def summary_table(runs: list[dict]) -> str:
    """Per-concept accuracy, one column per run, then the headline metrics. With a target, its accuracy and
    the others' mean are shown apart, and no mean over all concepts (it would count the erasure as damage)."""
    labels = [run_label(r) for r in runs]
    concepts = list(dict.fromkeys(c for r in runs for c in r["per_concept"]))
    width = max(22, *(len(c) for c in concepts))
    col = max(24, *(min(len(label), 28) for label in labels))
    lines = [f"{'concept':<{width}}  " + "  ".join(f"{label[:28]:>{col}}" for label in labels)]
    for c in concepts:
        cells = [f"{_with_interval(r['per_concept'].get(c)):>{col}}" for r in runs]
        lines.append(f"{c:<{width}}  " + "  ".join(cells))
    target = next((r["target"] for r in runs if r.get("target_accuracy") is not None), None)
    rows = [
        *([] if target else [("mean accuracy", "mean_accuracy")]),
        (f"target accuracy ({target})", "target_accuracy"),
        ("others' mean accuracy", "others_accuracy"),
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


def _with_interval(row: dict | None) -> str:
    if row is None:
        return "-"
    if "accuracy" not in row:  # a metric-only suite: no accuracy to show
        return f"n={row['n']}"
    return f"{row['accuracy']:.2f} {interval(row)} n={row['n']}"
