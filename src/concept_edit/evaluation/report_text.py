"""The report's words: what a suite tests, one sentence per run saying what it shows, the edited concepts, and
each metric's definition (given once per page by a `Glossary`); also how a run, a number and an interval are
written, which the tables and figures share.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from concept_edit.evaluation.metrics import wilson

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


def run_label(run: dict) -> str:
    names = run.get("edit_names") or [Path(e).parent.name or e for e in run.get("edits", [])]
    return run["model"] + (" + " + " + ".join(names) if names else " (unedited)")


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and np.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else html.escape(str(value))


def interval(row: dict) -> str:
    """ "[0.47, 0.87]" from a per-concept row's 95% interval (computed here for results files that lack one)."""
    low, high = row.get("ci95") or wilson(round(row["accuracy"] * row["n"]), row["n"])
    return f"[{low:.2f}, {high:.2f}]"


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
    return f"{k}/{row['n']} images ({row['accuracy']:.2f}, 95% CI {interval(row)})"


def others_mean(run: dict | None, targets: Sequence[str]) -> tuple[float, int] | None:
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
    others, others_before = others_mean(run, targets), others_mean(base, targets)
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
