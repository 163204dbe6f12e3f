"""One self-contained HTML page from results files: tables, bar charts and before/after image grids.

Runs are grouped by suite. Each suite opens with one sentence of what it tests, then one sentence per run
saying what it shows (model, method, concept and what changed, with the interval), built from the results
files alone. Every metric is defined once, where it first appears. The edited concepts (a run's `target`,
or a concept an edit names) are shown apart from the others, whose mean is what an edit should keep: one
mean over both would read an erasure as damage. Within a suite, sample images are paired across runs by
(prompt, seed), so a column of the grid shows the same prompt and seed before and after each edit, and the
judge's reading is written under every image it reads as something else (visible in print, not on hover).

The page is built here, from results files read and checked here; its words are in `report_text`, its tables in
`report_tables` and its charts and image grids in `report_figures`.
"""

from __future__ import annotations

import hashlib
import html
import importlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from concept_edit.evaluation.evaluate import check_results
from concept_edit.evaluation.report_figures import (
    accuracy_chart,
    accuracy_figure,
    distribution_section,
    img,
    sample_grids,
)
from concept_edit.evaluation.report_tables import concept_table, summary_html, summary_table
from concept_edit.evaluation.report_text import (
    Glossary,
    describe,
    edited_concepts,
    lead_sentence,
    run_label,
    suite_purpose,
)
from concept_edit.io import write_text

# the report's public names; describe, summary_table and accuracy_figure are re-exported from report_text,
# report_tables and report_figures for the modules that import them from here
__all__ = [
    "Section",
    "accuracy_figure",
    "build_report",
    "check_protocols",
    "comparable_protocol",
    "describe",
    "load_results",
    "register_section",
    "section_of",
    "sections",
    "summary_table",
    "write_report",
]

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
        elif data.get("kind") == "probe" or "rows" in data:
            raise ValueError(
                f"{path} is a probe or erasure-table file, and no report section for it is registered: import "
                "concept_edit.attacks.report first, or install the package again (pip install -e .) so its "
                "entry point is found"
            )
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
            differ = sorted(k for k in other.keys() | protocol.keys()
                            if (k in other) != (k in protocol) or other.get(k) != protocol.get(k))  # fmt: skip
            raise ValueError(
                f"{seen['_file']} and {run['_file']} evaluate suite {run['suite']} with different protocols "
                f"({', '.join(differ)} differ): their figures are not comparable. Re-run one, or pass "
                "--allow-mixed-protocols to put them in one table anyway"
            )


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
        mixed = any(comparable_protocol(r) != comparable_protocol(group[0]) for r in group if r.get("protocol"))
        parts.append(summary_html(group, targets, glossary, mixed))
        parts.append(concept_table(group, targets, glossary))
        if any("accuracy" in row for r in group for row in r["per_concept"].values()):
            parts.append(img(accuracy_chart(group, targets), "per-concept accuracy chart", "chart"))
        if any("distribution" in r for r in group):
            parts.append(distribution_section(group))
        parts.append(sample_grids(group, targets))
    for name, section in sections().items():
        parts.append(section.render(sectioned[name]))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(paths: Sequence[str | Path], out: str | Path, allow_mixed_protocols: bool = False) -> Path:
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give an .html file name")
    runs = load_results(paths, allow_mixed_protocols)
    write_text(out, build_report(runs))
    return out


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
