"""Run a suite on a (possibly edited) model and measure what it draws, with the suite's judge.

One path for every model: the suite names its judge (the shapes oracle, an ImageNet classifier, NudeNet,
CLIP zero-shot, or none), its Frechet feature extractor and its reference images (`suites.py`,
`judges/`, `features.py`, `references.py`).

The results dictionary always has `suite`, `model`, `edits`, `seed`, `per_concept` (concept ->
{accuracy, n, ci95, none_share} where the judge answers; {n} only for a metric-only suite) and
`mean_accuracy` (None for a metric-only suite), and `protocol` (what fixed the images and the judge: two
results are comparable only with equal protocols). `none_share` (with `none_ci95`) is the share of judged
images the judge read as showing none of its answers (an erased concept that became noise, rather than
another object); with a target, `target_accuracy` and `others_accuracy`; for a suite with an attribute
head, `distribution` (concept -> {attribute -> share}) and `deviation` (concept -> UCE's Delta). It also
holds the Frechet distance of the suite's features to its reference images (`frechet_to_renders` for true
shapes renders, `frechet_to_real` for a folder of real images) and to the unedited model's images, the image
change against the unedited model on the same prompts and seeds when that is known (overall and per
concept), the judge's own summary (`judge_summary`; NudeNet: detections per body part), and a few sample
images per concept (base64 PNG) for the report.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from concept_edit.edit import Edit, applied
from concept_edit.evaluation import metrics
from concept_edit.evaluation.judges import NONE, make_judge
from concept_edit.evaluation.references import check_reference, folder_images
from concept_edit.evaluation.suites import Entry, Suite
from concept_edit.generation import generate, to_array
from concept_edit.models.loading import model_info
from concept_edit.models.prompts import overlong_prompts
from concept_edit.worlds import registered, world_of

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
    judge=None,
    features: str | None = "suite",
    reference: str | None = "suite",
    store=None,
    batch_size: int = 32,
) -> tuple[dict | None, np.ndarray | None]:
    """Generate every suite entry (with `edits` applied), judge it, compute the metrics.

    Returns (results, images). The image change is measured against `baseline_images` (the unedited
    model's images for the same entries) or, when edits are given and `compute_baseline`, against a fresh
    unedited generation. `judge`, `features` and `reference` override the suite's ("suite": keep it);
    `store` (an `ImageStore` or a folder) keeps every generated image so a second run, or an interrupted
    one, draws only what is missing; under `accelerate launch` every process calls `evaluate` alike, each
    draws its share, and only the main process gets (results, images): the others get (None, None).
    """
    info, world = model_info(pipe), world_of(pipe)
    features = (suite.features or world.features) if features == "suite" else features
    reference = suite.reference if reference == "suite" else reference
    judge_spec = suite.judge or world.judge
    if judge is None:
        _check_judge_world(suite, judge_spec, world, info)
    if reference == "renders" and world.renders(suite.entries[:1]) is None:
        raise ValueError(
            f"true renders exist only for a world that can draw its prompts (ShapesSD); {info.spec!r} needs another "
            "--reference"
        )
    if target is not None and target not in suite.concepts:
        raise ValueError(
            f"target {target!r} is not a concept of {suite.name}; its concepts: {', '.join(suite.concepts)}"
        )
    check_reference(reference)
    if guidance is not None and any(e.guidance is not None for e in suite.entries):  # the user's scale wins
        suite = dataclasses.replace(suite, entries=tuple(dataclasses.replace(e, guidance=None) for e in suite.entries))
    judge = judge or make_judge(judge_spec)
    check_suite(pipe, suite, judge)
    extractor = _extractor(features)
    # the image change without LPIPS: the suite's features, else the world's own (the shapes oracle's)
    change_features = extractor or (_extractor(world.features) if world.features else None)
    # The unedited images: for the image change and the Frechet distance to them, where the suite has a
    # reference at all (shapes renders, unedited, real images); I2P, nudity and professions report neither.
    wants_baseline = baseline_images is None and bool(edits) and compute_baseline and reference is not None
    real = _check_before_drawing(pipe, suite, reference, change_features, wants_baseline or baseline_images is not None)
    # The paper's steps and guidance when the suite pins them (imagenette: UCE's 100 steps), else the model's.
    steps = suite.protocol.get("steps", info.default_steps) if steps is None else steps
    guidance = suite.protocol.get("guidance", info.default_guidance) if guidance is None else guidance

    def draw(with_edits: Sequence[Edit]) -> np.ndarray:
        return _generate(pipe, suite, with_edits, steps, guidance, store, batch_size, progress, allow_repeat)

    images = draw(edits)
    if wants_baseline:
        baseline_images = draw(())
    if images is None:  # another process of `accelerate launch` drew its share; the main process scores
        return None, None
    reading = judge.read(images, suite)
    predicted, expected = reading.labels, [e.label for e in suite.entries]
    judged = [i for i, p in enumerate(predicted) if p is not None]
    per_concept = metrics.per_concept_accuracy([predicted[i] for i in judged], [expected[i] for i in judged])
    results: dict = {
        "suite": suite.name,
        "model": info.spec,
        "edits": [e.source or e.name for e in edits],
        "seed": min(e.seed for e in suite.entries),  # the suite's first seed: its seeds decide the images
        "seeds": [min(e.seed for e in suite.entries), max(e.seed for e in suite.entries)],
        "steps": steps,
        "guidance": guidance,
        "per_concept": {k: {key: v[key] for key in ("accuracy", "n", "ci95")} for k, v in per_concept.items()},
        "mean_accuracy": float(np.mean([v["accuracy"] for v in per_concept.values()])) if per_concept else None,
    }
    for concept in suite.concepts:  # metric-only entries: the concept still has its n
        results["per_concept"].setdefault(concept, {"n": expected.count(concept)})
    if judged:
        judged_pred, judged_exp = [predicted[i] for i in judged], [expected[i] for i in judged]
        results.update(_none_shares(results["per_concept"], judged_pred, judged_exp))
    if target is not None and per_concept:
        results["target"] = target
        results["target_accuracy"], results["others_accuracy"] = metrics.target_and_others(per_concept, target)
    elif target is not None:
        results["target"] = target
    if suite.attribute_head:
        answers = suite.answers.get(suite.attribute_head) or judge.answers(suite.attribute_head)
        results.update(_bias_metrics(suite, reading.attributes, answers))
    summary = judge.summary(reading, suite)
    if summary:
        results["judge_summary"] = summary
    results["suite_version"] = suite.version
    results["edit_names"] = [e.name for e in edits]
    results.update(_image_metrics(suite, images, baseline_images, extractor, change_features, reference, real, world))
    if "clip_score" in suite.metrics:
        results.update(_clip_scores(suite, images))
    results["protocol"] = protocol(pipe, suite, info, steps, guidance, judge, extractor, reference)
    results["per_prompt"] = _per_prompt(suite.entries, predicted)
    results["samples"] = _samples(suite.entries, images, predicted, samples_per_concept)
    return results, images


def _check_judge_world(suite: Suite, spec: str | None, world, info) -> None:
    """A judge a world brings (the shapes oracle) reads only that world's images; a suite with no judge runs only
    on a model whose world has one."""
    if spec is None:
        raise ValueError(
            f"the {suite.name} suite names no judge and {info.spec!r} has none of its own: give --judge "
            "(imagenet, nudenet, clip, none)"
        )
    name = spec.partition(":")[0]
    if name in registered("judges") and name not in world.judges:
        raise ValueError(f"the {suite.name} suite is judged by {name}, which reads another world's images; "
                         f"{info.spec!r} is not a model of that world")


def check_suite(pipe, suite: Suite, judge=None) -> None:
    """Before generating: every entry asks a question its judge can answer, every prompt fits the encoder
    (or, for a suite whose papers cut long prompts (I2P, COCO), is cut as theirs were)."""
    from concept_edit.models.prompts import prompt_lengths_ok

    (judge or make_judge(suite.judge or world_of(pipe).judge)).check(suite)
    if suite.truncate_prompts:
        return
    try:
        prompt_lengths_ok(pipe, list(dict.fromkeys(e.prompt for e in suite.entries)))
    except ValueError as err:
        raise ValueError(f"suite {suite.name}: {err}") from None


def _check_before_drawing(pipe, suite: Suite, reference, extractor, image_change: bool):
    """What would fail after hours of drawing fails now: the reference folder's images (returned, with their
    count), the image-change metric, the CLIP score's model."""
    real = None
    if reference and reference.startswith("folder:"):
        real = folder_images(reference.partition(":")[2], model_info(pipe).resolution)
    if image_change and extractor is None and not metrics.lpips_available():
        raise ValueError(
            f"the {suite.name} suite measures the image change against the unedited model, which needs LPIPS "
            "(pip install 'concept-edit[eval]') or a feature distance (--features clip); or pass --no-baseline"
        )
    if "clip_score" in suite.metrics:
        from concept_edit.evaluation.judges.clip import load_clip

        load_clip(role="CLIP-score model")
    return real


def protocol(pipe, suite: Suite, info, steps: int, guidance: float, judge, extractor, reference) -> dict:
    """Everything that fixes the images and their reading; results with different protocols are not compared."""
    import diffusers
    import torch
    import transformers

    from concept_edit._version import __version__

    guidances = sorted({e.guidance for e in suite.entries if e.guidance is not None})
    return {
        "suite": suite.name,
        "suite_version": suite.version,
        "entries": len(suite.entries),
        "seeds": [min(e.seed for e in suite.entries), max(e.seed for e in suite.entries)],
        "steps": steps,
        "guidance": guidance,
        "per_prompt_guidance": guidances or None,
        "resolution": info.resolution,
        "scheduler": type(getattr(pipe, "scheduler", None)).__name__,
        "dtype": str(pipe.unet.dtype).removeprefix("torch."),
        "noise_device": "cpu" if pipe.device.type in ("cpu", "mps") else pipe.device.type,  # as generation draws it
        "truncated_prompts": len(overlong_prompts(pipe, list(dict.fromkeys(e.prompt for e in suite.entries))))
        if suite.truncate_prompts
        else 0,
        "judge": judge.protocol(),
        "features": extractor.protocol() if extractor is not None else None,
        "reference": reference,
        **({"suite_protocol": suite.protocol} if suite.protocol else {}),
        "versions": {
            "concept_edit": __version__,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
    }


def _extractor(spec: str | None):
    if spec is None:
        return None
    from concept_edit.evaluation.features import make_features

    return make_features(spec)


def _generate(pipe, suite, edits, steps, guidance, store, batch_size, progress, allow_repeat) -> np.ndarray | None:
    """Every entry's image, in order; entries with their own guidance (I2P) are drawn at it. With a store,
    images it holds are read back and the rest drawn and stored; under `accelerate launch` each process
    draws its share and only the main process gets the images (the others None)."""
    entries = suite.entries
    prompts, seeds = [e.prompt for e in entries], [e.seed for e in entries]
    if store is not None:
        from concept_edit.evaluation.store import generate_stored

        return generate_stored(
            pipe,
            prompts,
            seeds,
            store=store,
            edits=edits,
            steps=steps,
            guidance=guidance,
            guidances=[e.guidance for e in entries],
            batch_size=batch_size,
            progress=progress,
            allow_repeat=allow_repeat,
        )
    scales = [guidance if e.guidance is None else e.guidance for e in entries]
    out: list[np.ndarray | None] = [None] * len(entries)
    with applied(pipe, *edits, allow_repeat=allow_repeat):
        for scale in dict.fromkeys(scales):
            idx = [i for i, s in enumerate(scales) if s == scale]
            drawn = generate(
                pipe,
                [prompts[i] for i in idx],
                [seeds[i] for i in idx],
                steps=steps,
                guidance=scale,
                batch_size=batch_size,
                progress=progress,
            )
            for i, image in zip(idx, to_array(drawn), strict=True):
                out[i] = image
    return np.stack(out)


def _image_metrics(suite, images, baseline, extractor, change_features, reference, real, world) -> dict:
    """Frechet distances to the reference and the unedited images, and the image change (overall, per concept)."""
    out: dict = {"frechet_samples": len(images)}  # Frechet is biased by n: compare runs with the same n only
    feats = extractor(images) if extractor is not None and len(images) >= 2 else None
    if feats is not None and reference == "renders":
        out["frechet_to_renders"] = metrics.frechet_distance(feats, extractor(world.renders(suite.entries)))
    elif feats is not None and real is not None:
        out["frechet_to_real"] = metrics.frechet_distance(feats, extractor(real[0]))
        out["reference_images"] = real[1]
    if baseline is None:
        return out
    extractor = change_features
    out["image_change"] = _image_change(baseline, images, extractor)
    if feats is not None:
        out["frechet_to_unedited"] = metrics.frechet_distance(feats, extractor(baseline))
    labels = [e.label for e in suite.entries]
    groups = [e.scene.get("group") for e in suite.entries]
    if any(groups):  # artists: erased / preserved / held-out (UCE Figure 4, CAD Table 5)
        out["image_change_per_group"] = {
            g: _image_change(baseline[idx], images[idx], extractor)["mean"]
            for g in dict.fromkeys(g for g in groups if g)
            for idx in [np.array([i for i, other in enumerate(groups) if other == g])]
        }
    out["image_change_per_concept"] = {
        c: _image_change(baseline[idx], images[idx], extractor)["mean"]
        for c in suite.concepts
        for idx in [np.array([i for i, label in enumerate(labels) if label == c])]
    }
    return out


def _clip_scores(suite: Suite, images: np.ndarray) -> dict:
    """CLIP score of each image against its own prompt (UCE Table 4), averaged overall and per concept."""
    from concept_edit.evaluation.judges.clip import clip_score

    scores = clip_score(images, [e.prompt for e in suite.entries])
    labels = [e.label for e in suite.entries]
    per_concept = {
        c: float(np.mean([s for s, label in zip(scores, labels, strict=True) if label == c])) for c in suite.concepts
    }
    return {"clip_score": float(scores.mean()), "clip_score_per_concept": per_concept}


def _image_change(before: np.ndarray, after: np.ndarray, extractor) -> dict:
    """LPIPS when installed (the papers' metric), else the suite's feature distance (the oracle's for ShapesSD)."""
    return metrics.image_change(before, after, features=extractor)


def _none_shares(per_concept: dict, predicted: Sequence[str], expected: Sequence[str]) -> dict:
    """Adds each concept's share of "none" readings to its row; returns the overall share and its interval."""
    for concept, row in per_concept.items():
        idx = [i for i, e in enumerate(expected) if e == concept]
        if not idx:  # a concept the judge was not asked about
            continue
        row["none_share"] = sum(predicted[i] == NONE for i in idx) / len(idx)
    count = sum(p == NONE for p in predicted)
    low, high = metrics.wilson(count, len(predicted))
    return {"none_share": count / len(predicted), "none_ci95": [round(low, 4), round(high, 4)]}


def _bias_metrics(suite: Suite, attributes: Sequence[str | None], answers) -> dict:
    answers = list(answers)
    dist, dev = {}, {}
    for concept in suite.concepts:
        idx = [i for i, e in enumerate(suite.entries) if e.label == concept]
        dist[concept] = metrics.distribution([attributes[i] for i in idx], answers)
        dev[concept] = metrics.deviation(dist[concept])
    return {
        "attribute": suite.attribute_head,
        "distribution": dist,
        "deviation": dev,
        "mean_deviation": float(np.mean(list(dev.values()))),
    }


def _per_prompt(entries: Sequence[Entry], predicted: Sequence[str | None]) -> dict[str, dict]:
    """Per prompt: its n, and its accuracy over the images the judge answered (none: no accuracy)."""
    out: dict[str, dict] = {}
    for entry, pred in zip(entries, predicted, strict=True):
        row = out.setdefault(entry.prompt, {"label": entry.label, "correct": 0, "judged": 0, "n": 0})
        row["n"] += 1
        if pred is not None:
            row["judged"] += 1
            row["correct"] += int(pred == entry.label)
    for row in out.values():
        if row["judged"]:
            row["accuracy"] = row["correct"] / row["judged"]
    return out


SAMPLE_SIDE = 256  # report thumbnails: a 512-1024 px sample per image would make a results file of 100s of MB


def _png(image: np.ndarray) -> str:
    buf = io.BytesIO()
    picture = Image.fromarray(image)
    picture.thumbnail((SAMPLE_SIDE, SAMPLE_SIDE))  # no-op for ShapesSD's 32 px images
    picture.save(buf, format="PNG")
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
        if not isinstance(row, dict) or not isinstance(row.get("n"), int):
            raise ValueError(f"{source}: per_concept[{concept!r}] needs an integer n")
        if "accuracy" in row and not _is_share(row["accuracy"]):
            raise ValueError(f"{source}: per_concept[{concept!r}] accuracy must be in [0, 1]")
    if results["mean_accuracy"] is None and any("accuracy" in row for row in results["per_concept"].values()):
        raise ValueError(f"{source}: 'mean_accuracy' is null but some concepts have an accuracy")
    for key in ("mean_accuracy", "target_accuracy", "others_accuracy", "none_share"):
        if results.get(key) is not None and not _is_share(results[key]):
            raise ValueError(f"{source}: {key!r} must be a number in [0, 1], got {results[key]!r}")
    for key in ("frechet_to_renders", "frechet_to_real", "frechet_to_unedited", "mean_deviation"):
        if key in results and not _is_number(results[key]):
            raise ValueError(f"{source}: {key!r} must be a finite number, got {results[key]!r}")
    for key in ("edits", "edit_names"):
        if key in results and not isinstance(results[key], list):
            raise ValueError(f"{source}: {key!r} must be a list")
    for key in ("samples", "per_prompt", "deviation", "distribution", "image_change", "protocol", "judge_summary"):
        if key in results and not isinstance(results[key], dict):
            raise ValueError(f"{source}: {key!r} must be a JSON object")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_share(value) -> bool:
    return _is_number(value) and 0 <= value <= 1
