"""One self-contained HTML page from results files: tables, bar charts and before/after image grids.

Runs are grouped by suite. Each suite opens with one sentence of what it tests, then one sentence per run
saying what it shows (model, method, concept and what changed, with the interval), built from the results
files alone. Every metric is defined once, where it first appears. The edited concepts (a run's `target`,
or a concept an edit names) are shown apart from the others, whose mean is what an edit should keep: one
mean over both would read an erasure as damage. Within a suite, sample images are paired across runs by
(prompt, seed), so a column of the grid shows the same prompt and seed before and after each edit, and the
judge's reading is written under every image it reads as something else (visible in print, not on hover).
"""

from __future__ import annotations

import base64
import hashlib
import html
import importlib
import io
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from concept_edit.evaluation.evaluate import check_results
from concept_edit.evaluation.metrics import wilson
from concept_edit.io import write_text

log = logging.getLogger(__name__)

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc}h3{font-size:1.05em;margin:1.2em 0 .4em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:3px 9px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.tests{font-style:italic}.lead li{margin:.3em 0}.tgt td{background:#fff7e0}
dl.defs{font-size:.85em;color:#444;margin:.4em 0 1em}
dl.defs dt{font-weight:bold;display:inline}dl.defs dt::after{content:":"}dl.defs dd{display:inline;margin:0 0 0 .3em}
dl.defs dd::after{content:"";display:block;margin-bottom:.25em}
.pix{image-rendering:pixelated;width:64px;height:64px;border:1px solid #eee;display:block;margin:0 auto}
.wrong{outline:2px solid #d00;outline-offset:-1px}.chart{max-width:100%}.note{color:#666;font-size:.9em}
table.grid{margin:.2em 0 1em}table.grid td,table.grid th{border:none;background:none;text-align:center;
vertical-align:top;padding:2px 3px}table.grid th.cap{font-weight:normal;font-size:.72em;color:#555;width:84px}
table.grid th.lab{text-align:right;font-weight:normal;font-size:.85em;vertical-align:middle;max-width:220px}
.read{font-size:.75em;color:#b00;width:84px;min-height:1.1em;overflow-wrap:anywhere}
.nw{white-space:nowrap}table.wide{font-size:.8em}table.wide td,table.wide th{padding:2px 5px}
.gridbox{display:inline-block;vertical-align:top;margin:0 2.5em .6em 0}.gridbox p{margin:.4em 0 0}
"""

METHODS = {"uce": "UCE", "esd": "ESD", "cad": "CAD", "amnesia": "Selective Amnesia", "eigen": "eigen"}


DEFINITIONS = {  # each shown once, under the first table that uses it
    "accuracy": "the share of a concept's images in which the judge sees that concept; k/n counts them, [a, b] is "
    "the Wilson 95% confidence interval.",
    "target accuracy": "the accuracy of an edited concept (the run's --target, or a concept the edit names): for "
    "an erasure, lower means more erased.",
    "others' mean accuracy": "the accuracy averaged over the suite's other concepts, which the edit was not given "
    "to change: what it should keep (unchanged is best). The edited concepts are not in this mean.",
    "mean accuracy": "the accuracy averaged over all of the suite's concepts (no concept of this suite was edited).",
    "read as none": "the share of images in which the judge sees no object at all (an empty background).",
    "Frechet to renders": "the Fréchet distance between features of the generated images and of true renders of the "
    "same prompts (the shapes world's ground truth); lower is closer to what the prompts ask for. It grows as n "
    "shrinks: compare runs with the same number of images only.",
    "Frechet to real images": "the Fréchet distance between features of the generated images and of a folder of "
    "real images (FID with Inception features); lower is closer. Compare runs with the same n only.",
    "Frechet to unedited": "the Fréchet distance between the edited model's images and the unedited model's images "
    "of the same prompts and seeds: how far the edit moved the whole set (0: not at all).",
    "CLIP score": "100 × the cosine similarity of CLIP's embeddings of each image and of its own prompt, averaged "
    "(higher: the images follow their prompts).",
    "mean deviation": "UCE's Δ, |desired share − share| / desired share of each attribute, averaged over attributes "
    "and concepts (0: exactly the desired, here even, spread).",
    "none": "in a concept's cell: the share of its images read as no object.",
    "change": "in a concept's cell: the image change of that concept's images alone.",
}


def _image_change_definition(metric: str) -> str:
    if metric == "lpips":
        return (
            "the mean LPIPS distance between each edited image and the unedited model's image of the same prompt "
            "and seed (0: identical; higher: more changed)."
        )
    features = metric.removesuffix("-feature-cosine-distance")
    features = {"oracle": "the shapes oracle's", "clip": "CLIP", "inception": "Inception"}.get(features, features)
    return (
        f"the mean cosine distance between {features} features of each edited image and of the unedited model's "
        f"image of the same prompt and seed (0: identical; recorded as {metric})."
    )


class Glossary:
    """Defines each metric once on the page, under the first table that shows it."""

    def __init__(self) -> None:
        self.done: set[str] = set()

    def define(self, names: Sequence[str], metric: str | None = None) -> str:
        items = []
        for name in dict.fromkeys(names):
            if name == "image change" and metric is not None:
                key, text = f"image change ({metric})", _image_change_definition(metric)
            elif name in DEFINITIONS:
                key, text = name, DEFINITIONS[name]
            else:
                continue
            if key not in self.done:
                self.done.add(key)
                items.append(f"<dt>{html.escape(name)}</dt><dd>{html.escape(text)}</dd>")
        return f"<dl class='defs'>{''.join(items)}</dl>" if items else ""


def load_results(paths: Sequence[str | Path], allow_mixed_protocols: bool = False) -> list[dict]:
    """Read and check results files; refuse two evaluation runs of one suite whose protocols differ (other
    seeds, steps, judge or its version: their numbers are not comparable) unless `allow_mixed_protocols`.
    A file given twice (or a byte-identical copy) is shown once, with a warning."""
    runs: list[dict] = []
    seen: dict[str, Path] = {}
    for path in map(Path, paths):
        raw = _read(path)
        digest = hashlib.sha256(raw).hexdigest()
        if digest in seen:
            first = seen[digest]
            what = "was given twice" if _same_file(first, path) else f"holds the same results as {first}"
            log.warning("%s %s: shown once", path, what)
            continue
        seen[digest] = path
        data = _parse(path, raw)
        section = section_of(data)
        if section is not None:
            section.check(data, str(path))
        else:
            check_results(data, str(path))
        data.setdefault("_file", path.name)
        runs.append(data)
    if not runs:
        raise ValueError("no results files given")
    if not allow_mixed_protocols:
        check_protocols(runs)
    return runs


READS = "`report` reads the .json files that evaluate, probe and benchmarks/erasure_table.py --json write"


def _read(path: Path) -> bytes:
    """The file's bytes, after a look at its first bytes: a model or edit file (gigabytes of safetensors) is
    refused without being read whole."""
    try:
        with path.open("rb") as f:
            head = f.read(4096)
            start = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
            if start != b"{":
                kind = " (a .safetensors file: an edit or model weights)" if path.suffix == ".safetensors" else ""
                raise ValueError(f"{path} is not a JSON results file{kind}; {READS}")
            return head + f.read()
    except OSError as err:
        raise ValueError(f"cannot read results file {path}: {err.strerror or err}") from None


def _parse(path: Path, raw: bytes) -> dict:
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a JSON results file (not UTF-8 text); {READS}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"cannot read results file {path}: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a concept-edit results file")
    return data


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


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
        if protocol is None or section_of(run) is not None:
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
    sectioned = {name: [r for r in runs if section_of(r) is sections()[name]] for name in sections()}
    runs = [r for r in runs if section_of(r) is None]
    suites = list(dict.fromkeys(r["suite"] for r in runs))
    if runs:
        parts.append(
            "<p class='note'>Runs: "
            + "; ".join(f"{html.escape(run_label(r))} [{html.escape(r['_file'])}]" for r in runs)
            + "</p>"
        )
    glossary = Glossary()
    for suite in suites:
        group = [r for r in runs if r["suite"] == suite]
        targets = edited_concepts(group)
        parts.append(f"<h2>Suite {html.escape(suite)}</h2>")
        parts.append(f"<p class='tests'>What it tests: {html.escape(suite_purpose(group[0]))}</p>")
        parts.append(
            "<ul class='lead'>" + "".join(f"<li>{lead_sentence(r, group, targets)}</li>" for r in group) + "</ul>"
        )
        parts.append(_summary_html(group, targets, glossary))
        parts.append(_concept_table(group, targets, glossary))
        if any("accuracy" in row for r in group for row in r["per_concept"].values()):
            parts.append(_img(_accuracy_chart(group, targets), "per-concept accuracy chart", "chart"))
        if any("distribution" in r for r in group):
            parts.append(_distribution_section(group))
        parts.append(_grids(group, targets))
    for name, section in sections().items():
        parts.append(section.render(sectioned[name]))
    parts.append("</body></html>")
    return "\n".join(parts)


def suite_purpose(run: dict) -> str:
    """One sentence of what a run's suite tests (a custom prompt file: what its judge checks)."""
    from concept_edit.worlds import worlds

    base = run["suite"].partition(":")[0]
    for world in worlds().values():
        sentence = world.describe_suite(base)
        if sentence:
            return sentence
    return (
        f"the prompts of the file {run['suite']}: each names an expected label, and the judge says whether it sees it."
    )


_EDIT_NAME = re.compile(r"^(?P<method>[^()]+)\((?P<concepts>.*)\)$")


def _edits(run: dict) -> list[tuple[str, list[str]]]:
    """(method, concepts) of each edit of a run, from the names its results file records."""
    return _parse_edit_names(run.get("edit_names") or [Path(e).name for e in run.get("edits", [])])


def _parse_edit_names(names: Sequence[str]) -> list[tuple[str, list[str]]]:
    """ "uce(circle, square)" -> ("uce", ["circle", "square"]); a name of another form is kept as the method."""
    out = []
    for name in names:
        match = _EDIT_NAME.match(name)
        if match is None or match["concepts"] == "?":
            out.append((name if match is None else match["method"], []))
        else:
            out.append((match["method"], [c.strip() for c in match["concepts"].split(", ")]))
    return out


def _norm(text: str) -> str:
    text = " ".join(text.lower().split())
    return re.sub(r"^(a|an|the) ", "", text)


def edited_concepts(group: list[dict]) -> list[str]:
    """The suite's concepts that were edited: each run's --target, and each concept an edit names that the
    suite holds (compared without case or a leading article: the edit "a heart" is the concept "heart")."""
    concepts = list(dict.fromkeys(c for r in group for c in r["per_concept"]))
    by_norm = {_norm(c): c for c in concepts}
    named = [r["target"] for r in group if isinstance(r.get("target"), str)]
    named += [c for r in group for _, cs in _edits(r) for c in [", ".join(cs), *cs]]  # a concept may hold ", "
    return list(dict.fromkeys(by_norm[_norm(n)] for n in named if _norm(n) in by_norm))


def _who(run: dict) -> str:
    return describe(run["model"], run.get("edit_names") or [Path(e).name for e in run.get("edits", [])])


def describe(model: str, edit_names: Sequence[str]) -> str:
    """ "UCE's edit of 'circle' in ShapesSD", or "ShapesSD, unedited"."""
    from concept_edit.worlds import world_for_spec

    world = world_for_spec(model)
    model = world.title if world is not None else model
    edits = _parse_edit_names(edit_names)
    if not edits:
        return f"{model}, unedited"
    names = [
        f"{METHODS.get(method, method)}'s edit of {', '.join(repr(c) for c in concepts)}" if concepts else method
        for method, concepts in edits
    ]
    return f"{' + '.join(names)} in {model}"


def _count(row: dict) -> str:
    """'3/16 images (0.19, 95% CI [0.07, 0.43])' from a per-concept row."""
    k = round(row["accuracy"] * row["n"])
    return f"{k}/{row['n']} images ({row['accuracy']:.2f}, 95% CI {_interval(row)})"


def _others(run: dict | None, targets: Sequence[str]) -> tuple[float, int] | None:
    """(mean accuracy, number of concepts) over the concepts that were not edited."""
    if run is None:
        return None
    values = [v["accuracy"] for c, v in run["per_concept"].items() if c not in targets and "accuracy" in v]
    return (float(np.mean(values)), len(values)) if values else None


def baseline_of(run: dict, group: list[dict]) -> dict | None:
    """The unedited run of the same model in the group, for an edited run (None otherwise)."""
    if not run.get("edits") and not run.get("edit_names"):
        return None
    return next(
        (r for r in group if not r.get("edits") and not r.get("edit_names") and r["model"] == run["model"]), None
    )


def lead_sentence(run: dict, group: list[dict], targets: Sequence[str]) -> str:
    """What a run shows in one sentence: who (model, method, concept), then what changed, with intervals."""
    base = baseline_of(run, group)
    edited = bool(_edits(run))
    clauses = []
    for t in targets:
        row = run["per_concept"].get(t) or {}
        if "accuracy" not in row:
            continue
        before = (base or {}).get("per_concept", {}).get(t) or {}
        if "accuracy" in before:
            clauses.append(f"the judge saw {t} in {_count(before)} before the edit and {_count(row)} after")
        else:
            clauses.append(f"the judge saw {t} in {_count(row)}")
    others, others_before = _others(run, targets), _others(base, targets)
    if others is not None:
        what = f"the other {others[1]} concepts' mean accuracy" if targets else "the judge's mean accuracy"
        if not targets:
            what += f" over the suite's {others[1]} concepts"
        clauses.append(
            f"{what} went from {others_before[0]:.2f} to {others[0]:.2f}"
            if others_before is not None
            else f"{what} is {others[0]:.2f}"
        )
    for t in targets:  # a bias suite: the edited concept's own deviation
        now, was = (run.get("deviation") or {}).get(t), ((base or {}).get("deviation") or {}).get(t)
        if isinstance(now, int | float):
            clauses.append(
                f"{t}'s deviation {was:.2f} before, {now:.2f} after"
                if isinstance(was, int | float)
                else f"{t}'s deviation {now:.2f}"
            )
    for name, key in (("mean deviation", "mean_deviation"), ("CLIP score", "clip_score")):
        if isinstance(run.get(key), int | float):
            was = (base or {}).get(key)
            clauses.append(
                f"{name} {was:.2f} before, {run[key]:.2f} after"
                if isinstance(was, int | float)
                else f"{name} {run[key]:.2f}"
            )
    change = run.get("image_change") or {}
    if isinstance(change.get("mean"), int | float):
        clauses.append(f"image change against the unedited model {change['mean']:.3f}")
    if edited and base is None and any(c.startswith("the judge saw") for c in clauses):
        clauses.append("no unedited run of this suite is in this report to compare with")
    text = "; ".join(clauses) or "no figure to summarise"
    return f"<b>{html.escape(_who(run))}</b>: {html.escape(text)}."


@dataclass(frozen=True)
class Section:
    """A part of the report for results files that are not evaluation runs (probe results, the erasure table).

    Another package registers one (`register_section`) from a module named by the `concept_edit.report_sections`
    entry point, so the report reads the files it knows nothing of (the attacks' sections come from
    `concept_edit.attacks.report`) without importing that package."""

    name: str
    recognises: Callable[[dict], bool]  # is this results file one of the section's
    check: Callable[[dict, str], None]  # ValueError naming the file when it is malformed
    render: Callable[[list[dict]], str]  # HTML of all the section's files ("" for none)


_SECTIONS: dict[str, Section] = {}


def register_section(section: Section) -> None:
    _SECTIONS[section.name] = section


def sections() -> dict[str, Section]:
    """Every registered section, in order; those named by the entry point are imported first."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="concept_edit.report_sections"):
        importlib.import_module(ep.value)
    return _SECTIONS


def section_of(data: dict) -> Section | None:
    return next((s for s in sections().values() if s.recognises(data)), None)


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


def _target_cell(run: dict, target: str) -> str:
    row = run["per_concept"].get(target) or {}
    if "accuracy" not in row:
        return "–"
    k = round(row["accuracy"] * row["n"])
    return f"{row['accuracy']:.2f} <span class='note'>{_interval(row)} {k}/{row['n']}</span>"


def _summary_html(group: list[dict], targets: Sequence[str], glossary: Glossary) -> str:
    cols: list[tuple[str, str, Callable[[dict], str]]] = []  # (header, metric defined, cell)
    for t in targets:
        if any("accuracy" in (r["per_concept"].get(t) or {}) for r in group):  # not on a metric-only suite
            cols.append((f"target accuracy<br>{html.escape(t)}", "target accuracy", lambda r, t=t: _target_cell(r, t)))
    others = "others' mean accuracy" if targets else "mean accuracy"
    if any(_others(r, targets) for r in group):
        cols.append((others, others, lambda r: _fmt((_others(r, targets) or (None,))[0])))
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
        (name, name, lambda r, get=get: _fmt(get(r))) for name, get in plain if any(get(r) is not None for r in group)
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
        _protocol_note(group)
        + _runs_by_key(group, "judge_summary", "The judge's figures")
        + _runs_by_key(group, "image_change_per_group", "Image change per group")
    )
    return f"<table><tr><th>run</th>{head}</tr>{rows}</table>{defined}{extras}"


def _protocol_note(group: list[dict]) -> str:
    protocols = [r["protocol"] for r in group if r.get("protocol")]
    if not protocols:
        return ""
    p = protocols[0]
    text = f"protocol: {p['entries']} images, seeds {p['seeds'][0]}–{p['seeds'][1]}, {p['steps']} steps, "
    text += f"guidance {p['guidance']}, {p['resolution']} px; judge: {_describe(p.get('judge'), 'judge')}"
    if p.get("features"):
        text += f"; features: {_describe(p['features'], 'features')}"
    text = html.escape(text)
    if any(comparable_protocol(r) != comparable_protocol(group[0]) for r in group if r.get("protocol")):
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


def _concept_table(group: list[dict], targets: Sequence[str], glossary: Glossary) -> str:
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
                note = f"{_interval(v)} {k}/{v['n']}{none}{change}"
                cells.append(f"<td>{_fmt(v['accuracy'], 2)} <span class='note'>{note}</span></td>")
            else:
                cells.append(f"<td>– <span class='note'>n={v['n']}{change}</span></td>" if v else "<td>–</td>")
        name = html.escape(concept) + (" <b>(target)</b>" if concept in targets else "")
        rows.append(f"<tr{' class=tgt' if concept in targets else ''}><td>{name}</td>{''.join(cells)}</tr>")
    title = "Per concept (the judge's accuracy" + ("; edited concepts first)" if targets else ")")
    defined = glossary.define([n for n in ("none", "change") if n in used])
    return f"<h3>{title}</h3><table><tr><th>concept</th>{head}</tr>{''.join(rows)}</table>{defined}"


def _figure_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _accuracy_chart(group: list[dict], targets: Sequence[str] = ()) -> str:
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


def _distribution_section(group: list[dict]) -> str:
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
        + "".join(f"<td>{_fmt(r['deviation'].get(c))}</td>" for c in concepts)
        + "</tr>"
        for r in runs
    )
    table = (
        "<table><tr><th>deviation from an even spread (UCE's Δ)</th>"
        + "".join(f"<th>{html.escape(c)}</th>" for c in concepts)
        + f"</tr>{rows}</table>"
    )
    return "<h3>Attribute distribution</h3>" + _img(_figure_png(fig), "attribute distribution", "chart") + table


def _grids(group: list[dict], targets: Sequence[str] = ()) -> str:
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
                image = _img(sample["png"], alt, "pix" if correct else "pix wrong")
                cells.append(f"<td>{image}<div class='read'>{html.escape(reading)}</div></td>")
            rows.append(f"<tr><th class='lab'>{html.escape(run_label(r))}</th>{''.join(cells)}</tr>")
        name = html.escape(concept) + (" (target)" if concept in targets else "")
        table = f"<table class='grid'><tr><th></th>{head}</tr>{''.join(rows)}</table>"
        out.append(f"<div class='gridbox'><p><b>{name}</b></p>{table}</div>")
    return "\n".join(out)


def _img(b64png: str, alt: str, cls: str) -> str:
    return (
        f"<img class='{cls}' alt='{html.escape(alt)}' title='{html.escape(alt)}' src='data:image/png;base64,{b64png}'>"
    )


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
