"""The report's pictures, embedded in the page as base64 PNGs: the per-concept accuracy chart, the attribute
distribution (with its deviation table), and the before/after sample grids paired by (prompt, seed)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence

import numpy as np

from concept_edit.evaluation.report_text import fmt, run_label


def _figure_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def accuracy_chart(group: list[dict], targets: Sequence[str] = ()) -> str:
    return _figure_png(accuracy_figure(group, targets))


def accuracy_figure(group: list[dict], targets: Sequence[str] = ()):
    """The per-concept accuracy bars, one colour per run, the edited concepts first and marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    concepts = list(dict.fromkeys(c for r in group for c in r["per_concept"]))
    concepts = [c for c in targets if c in concepts] + [c for c in concepts if c not in targets]
    x = np.arange(len(concepts))
    width = 0.8 / len(group)
    fig, ax = plt.subplots(figsize=(max(6, len(concepts) * 0.9), 3))
    for i, r in enumerate(group):
        values = [r["per_concept"].get(c, {}).get("accuracy", np.nan) for c in concepts]
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=run_label(r))
    ax.set_xticks(x, [f"{c}\n(target)" if c in targets else c for c in concepts], rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("judge accuracy")
    # above the axes, never over a bar: any corner inside the axes covers some concept's bars
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.02), ncol=min(len(group), 3), frameon=False)
    return fig


def distribution_section(group: list[dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from concept_edit.worlds import worlds

    COLORS = {name: rgb for w in worlds().values() for name, rgb in w.colors.items()}  # noqa: N806

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
        + "".join(f"<td>{fmt(r['deviation'].get(c))}</td>" for c in concepts)
        + "</tr>"
        for r in runs
    )
    table = (
        "<table><tr><th>deviation from an even spread (UCE's Δ)</th>"
        + "".join(f"<th>{html.escape(c)}</th>" for c in concepts)
        + f"</tr>{rows}</table>"
    )
    return "<h3>Attribute distribution</h3>" + img(_figure_png(fig), "attribute distribution", "chart") + table


def sample_grids(group: list[dict], targets: Sequence[str] = ()) -> str:
    if not any(r.get("samples") for r in group):
        return ""
    out = [
        "<h3>Samples: the same prompts and seeds in every run</h3>",
        "<p class='note'>Each column is one prompt and seed, drawn by each run. Outlined in red: the judge does not "
        "see the prompt's concept, and what it read is written under the image (for an erased target, that is the "
        "edit at work).</p>",
    ]
    concepts = list(dict.fromkeys(c for r in group for c in r.get("samples", {})))
    concepts = [c for c in targets if c in concepts] + [c for c in concepts if c not in targets]
    for concept in concepts:
        keys = list(
            dict.fromkeys((s["prompt"], s["seed"]) for r in group for s in r.get("samples", {}).get(concept, []))
        )
        head = "".join(f"<th class='cap'>{html.escape(p)}<br>seed {s}</th>" for p, s in keys)
        rows = []
        for r in group:
            by_key = {(s["prompt"], s["seed"]): s for s in r.get("samples", {}).get(concept, [])}
            cells = []
            for key in keys:
                sample = by_key.get(key)
                if sample is None:
                    cells.append("<td></td>")
                    continue
                correct = sample["predicted"] in (concept, None)  # None: a metric-only judge gave no reading
                reading = "" if correct else f"judge: {sample['predicted']}"
                alt = f"{key[0]} seed {key[1]}" + (f" ({reading})" if reading else "")
                image = img(sample["png"], alt, "pix" if correct else "pix wrong")
                cells.append(f"<td>{image}<div class='read'>{html.escape(reading)}</div></td>")
            rows.append(f"<tr><th class='lab'>{html.escape(run_label(r))}</th>{''.join(cells)}</tr>")
        name = html.escape(concept) + (" (target)" if concept in targets else "")
        table = f"<table class='grid'><tr><th></th>{head}</tr>{''.join(rows)}</table>"
        out.append(f"<div class='gridbox'><p><b>{name}</b></p>{table}</div>")
    return "\n".join(out)


def img(b64png: str, alt: str, cls: str) -> str:
    return (
        f"<img class='{cls}' alt='{html.escape(alt)}' title='{html.escape(alt)}' src='data:image/png;base64,{b64png}'>"
    )
