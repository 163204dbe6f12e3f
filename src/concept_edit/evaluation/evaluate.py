"""Run a suite on a (possibly edited) shapes-world model and measure what it draws.

The results dictionary always has `suite`, `model`, `edits`, `seed`, `per_concept` (concept ->
{accuracy, n, ci95, none_share}) and `mean_accuracy`; `none_share` (with `none_ci95`) is the share of images
the oracle read as showing no object/colour/style at all on the head that judges them (an erased concept
that became noise, rather than another object); with a target, `target_accuracy` and `others_accuracy`; for the bias
suite, `distribution` (concept -> {attribute -> share}) and `deviation` (concept -> UCE's Delta). It also
holds the Frechet distance of oracle features to true renders of the same prompts (the FID analogue),
the image change against the unedited model on the same prompts and seeds when that is known, and a few
sample images per concept (base64 PNG) for the report.
"""

from __future__ import annotations

import base64
import io
import logging
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from concept_edit.edit import Edit, applied
from concept_edit.evaluation import metrics
from concept_edit.evaluation.suites import Entry, Suite
from concept_edit.generation import generate, to_array
from concept_edit.models.loading import model_info
from concept_edit.shapes.oracle import HEADS, NONE, Oracle
from concept_edit.shapes.world import COLORS, OBJECTS, STYLES, Scene, logo, render

log = logging.getLogger(__name__)
REQUIRED_KEYS = ("suite", "model", "edits", "seed", "per_concept", "mean_accuracy")


def evaluate(
    pipe,
    suite: Suite,
    *,
    edits: Sequence[Edit] = (),
    target: str | None = None,
    baseline_images: np.ndarray | None = None,
    compute_baseline: bool = True,
    samples_per_concept: int = 4,
    steps: int | None = None,
    guidance: float | None = None,
    progress: bool = True,
    allow_repeat: bool = False,
) -> tuple[dict, np.ndarray]:
    """Generate every suite entry (with `edits` applied), judge it with the oracle, compute the metrics.

    Returns (results, images). The image change is measured against `baseline_images` (the unedited
    model's images for the same entries) or, when edits are given and `compute_baseline`, against a fresh
    unedited generation.
    """
    info = model_info(pipe)
    if info.world != "shapes":
        raise ValueError(
            f"the {suite.name} suite is judged by the shapes-world oracle; {info.spec!r} is not a shapes-world model"
        )
    if target is not None and target not in suite.concepts:
        raise ValueError(
            f"target {target!r} is not a concept of {suite.name}; its concepts: {', '.join(suite.concepts)}"
        )
    check_suite(pipe, suite)
    steps = info.default_steps if steps is None else steps
    guidance = info.default_guidance if guidance is None else guidance
    prompts = [e.prompt for e in suite.entries]
    seeds = [e.seed for e in suite.entries]
    with applied(pipe, *edits, allow_repeat=allow_repeat):
        images = to_array(generate(pipe, prompts, seeds, steps=steps, guidance=guidance, progress=progress))
    oracle = Oracle.load()
    reading = oracle.read(images)
    predicted = [_prediction(reading, i, e) for i, e in enumerate(suite.entries)]
    expected = [e.label for e in suite.entries]
    per_concept = metrics.per_concept_accuracy(predicted, expected)
    results: dict = {
        "suite": suite.name,
        "model": info.spec,
        "edits": [e.source or e.name for e in edits],
        "seed": min(seeds),  # the suite's first seed: its seeds decide the images, not a separate one
        "seeds": [min(seeds), max(seeds)],
        "steps": steps,
        "guidance": guidance,
        "per_concept": {k: {key: v[key] for key in ("accuracy", "n", "ci95")} for k, v in per_concept.items()},
        "mean_accuracy": float(np.mean([v["accuracy"] for v in per_concept.values()])),
    }
    results.update(_none_shares(results["per_concept"], predicted, expected))
    if target is not None:
        results["target"] = target
        results["target_accuracy"], results["others_accuracy"] = metrics.target_and_others(per_concept, target)
    if suite.attribute_head:
        results.update(_bias_metrics(suite, reading))
    results["suite_version"] = suite.version
    results["edit_names"] = [e.name for e in edits]
    # Frechet distances are biased by the sample size (128-d features): compare runs with the same n only.
    results["frechet_samples"] = len(images)
    if len(images) >= 2:  # a Gaussian fit needs two images at least
        renders = oracle.read(_renders(suite)).features
        results["frechet_to_renders"] = metrics.frechet_distance(reading.features, renders)
    if baseline_images is None and edits and compute_baseline:
        baseline_images = to_array(generate(pipe, prompts, seeds, steps=steps, guidance=guidance, progress=progress))
    if baseline_images is not None:
        results["image_change"] = metrics.image_change(baseline_images, images, oracle)
        if len(images) >= 2:
            baseline = oracle.read(baseline_images).features
            results["frechet_to_unedited"] = metrics.frechet_distance(reading.features, baseline)
    results["per_prompt"] = _per_prompt(suite.entries, predicted)
    results["samples"] = _samples(suite.entries, images, predicted, samples_per_concept)
    return results, images


def check_suite(pipe, suite: Suite) -> None:
    """Before generating: every label is one the oracle can read, every prompt fits the text encoder."""
    from concept_edit.models.prompts import prompt_lengths_ok

    for entry in suite.entries:
        known = ("logo", "no logo") if entry.head == "logo" else HEADS[entry.head]
        if entry.label not in known:
            raise ValueError(
                f"suite {suite.name}: label {entry.label!r} (prompt {entry.prompt!r}) is not a {entry.head} the "
                f"oracle knows; choose one of {', '.join(known)}"
            )
    try:
        prompt_lengths_ok(pipe, list(dict.fromkeys(e.prompt for e in suite.entries)))
    except ValueError as err:
        raise ValueError(f"suite {suite.name}: {err}") from None


def _prediction(reading, i: int, entry: Entry) -> str:
    if entry.head == "logo":
        return "logo" if reading.logo_prob[i] > 0.5 else "no logo"
    return reading.labels(entry.head)[i]


def _none_shares(per_concept: dict, predicted: Sequence[str], expected: Sequence[str]) -> dict:
    """Adds each concept's share of "none" readings to its row; returns the overall share and its interval."""
    for concept, row in per_concept.items():
        idx = [i for i, e in enumerate(expected) if e == concept]
        row["none_share"] = sum(predicted[i] == NONE for i in idx) / len(idx)
    count = sum(p == NONE for p in predicted)
    low, high = metrics.wilson(count, len(predicted))
    return {"none_share": count / len(predicted), "none_ci95": [round(low, 4), round(high, 4)]}


def _bias_metrics(suite: Suite, reading) -> dict:
    attributes = list(HEADS[suite.attribute_head])
    labels = reading.labels(suite.attribute_head)
    dist, dev = {}, {}
    for concept in suite.concepts:
        idx = [i for i, e in enumerate(suite.entries) if e.label == concept]
        dist[concept] = metrics.distribution([labels[i] for i in idx], attributes)
        dev[concept] = metrics.deviation(dist[concept])
    return {
        "attribute": suite.attribute_head,
        "distribution": dist,
        "deviation": dev,
        "mean_deviation": float(np.mean(list(dev.values()))),
    }


def _renders(suite: Suite) -> np.ndarray:
    """A true render for every entry: its named attributes, the rest drawn uniformly from its seed."""
    out = []
    for entry in suite.entries:
        if entry.scene.get("logo"):
            out.append(logo())
            continue
        rng = np.random.default_rng([entry.seed, 7])
        obj = entry.scene.get("obj") or (entry.label if entry.label in OBJECTS else OBJECTS[rng.integers(8)])
        color = entry.scene.get("color") or (entry.label if entry.label in COLORS else list(COLORS)[rng.integers(8)])
        style = entry.scene.get("style") or (entry.label if entry.label in STYLES else STYLES[rng.integers(6)])
        out.append(render(Scene(obj, color, style, int(rng.integers(2**31)))))
    return np.stack(out)


def _per_prompt(entries: Sequence[Entry], predicted: Sequence[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for entry, pred in zip(entries, predicted, strict=True):
        row = out.setdefault(entry.prompt, {"label": entry.label, "correct": 0, "n": 0})
        row["n"] += 1
        row["correct"] += int(pred == entry.label)
    for row in out.values():
        row["accuracy"] = row["correct"] / row["n"]
    return out


def _png(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _samples(entries: Sequence[Entry], images: np.ndarray, predicted: Sequence[str], k: int) -> dict[str, list]:
    out: dict[str, list] = {}
    for i, entry in enumerate(entries):
        bucket = out.setdefault(entry.label, [])
        if len(bucket) < k:
            bucket.append(
                {"prompt": entry.prompt, "seed": entry.seed, "predicted": predicted[i], "png": _png(images[i])}
            )
    return out


def check_results(results: dict, source: str = "results") -> None:
    """ValueError naming the file and the field unless `results` has the shape every results file has."""
    missing = [k for k in REQUIRED_KEYS if k not in results]
    if missing:
        raise ValueError(f"{source} is not a concept-edit results file (missing {', '.join(missing)})")
    if not isinstance(results["per_concept"], dict) or not results["per_concept"]:
        raise ValueError(f"{source}: 'per_concept' must map each concept to its accuracy")
    for concept, row in results["per_concept"].items():
        if not isinstance(row, dict) or not _is_share(row.get("accuracy")) or not isinstance(row.get("n"), int):
            raise ValueError(f"{source}: per_concept[{concept!r}] needs an accuracy in [0, 1] and an integer n")
    for key in ("mean_accuracy", "target_accuracy", "others_accuracy", "none_share"):
        if key in results and not _is_share(results[key]):
            raise ValueError(f"{source}: {key!r} must be a number in [0, 1], got {results[key]!r}")
    for key in ("frechet_to_renders", "frechet_to_unedited", "mean_deviation"):
        if key in results and not _is_number(results[key]):
            raise ValueError(f"{source}: {key!r} must be a finite number, got {results[key]!r}")
    for key in ("edits", "edit_names"):
        if key in results and not isinstance(results[key], list):
            raise ValueError(f"{source}: {key!r} must be a list")
    for key in ("samples", "per_prompt", "deviation", "distribution", "image_change"):
        if key in results and not isinstance(results[key], dict):
            raise ValueError(f"{source}: {key!r} must be a JSON object")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_share(value) -> bool:
    return _is_number(value) and 0 <= value <= 1
