"""The measure stage of `evaluate`: from the tally of every judged chunk (`tally.py`: the judge's answers, Frechet
statistics, per-pair image change, CLIP scores, thumbnails) to the results dictionary (accuracies with their
intervals, none shares, bias distributions, Frechet distances, the image change, CLIP scores, per-prompt rows,
sample thumbnails, the protocol). No image is needed here: they went chunk by chunk."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from concept_edit.evaluation import frechet, metrics
from concept_edit.evaluation.judges import NONE
from concept_edit.evaluation.suites import Entry, Suite
from concept_edit.models.prompts import overlong_prompts


def measure(pipe, plan, tally) -> dict:
    """The results dictionary of one evaluation (`evaluate`'s module docstring) from its `Tally`."""
    suite, spec, info = plan.suite, plan.spec, plan.info
    reading = tally.reading()
    predicted, expected = reading.labels, [e.label for e in suite.entries]
    judged = [i for i, p in enumerate(predicted) if p is not None]
    per_concept = metrics.per_concept_accuracy([predicted[i] for i in judged], [expected[i] for i in judged])
    results: dict = {
        "suite": suite.name,
        "model": info.spec,
        "edits": [e.source or e.name for e in spec.edits],
        "seed": min(e.seed for e in suite.entries),  # the suite's first seed: its seeds decide the images
        "seeds": [min(e.seed for e in suite.entries), max(e.seed for e in suite.entries)],
        "steps": plan.steps,
        "guidance": plan.guidance,
        "per_concept": {k: {key: v[key] for key in ("accuracy", "n", "ci95")} for k, v in per_concept.items()},
        "mean_accuracy": float(np.mean([v["accuracy"] for v in per_concept.values()])) if per_concept else None,
    }
    for concept in suite.concepts:  # metric-only entries: the concept still has its n
        results["per_concept"].setdefault(concept, {"n": expected.count(concept)})
    if judged:
        judged_pred, judged_exp = [predicted[i] for i in judged], [expected[i] for i in judged]
        results.update(_none_shares(results["per_concept"], judged_pred, judged_exp))
    if spec.target is not None:
        results["target"] = spec.target
        if per_concept:
            results["target_accuracy"], results["others_accuracy"] = metrics.target_and_others(per_concept, spec.target)
    if suite.attribute_head:
        answers = suite.answers.get(suite.attribute_head) or plan.judge.answers(suite.attribute_head)
        results.update(_bias_metrics(suite, reading.attributes, answers))
    summary = plan.judge.summary(reading, suite)
    if summary:
        results["judge_summary"] = summary
    results["suite_version"] = suite.version
    results["edit_names"] = [e.name for e in spec.edits]
    results.update(_image_metrics(plan, tally))
    if "clip_score" in suite.metrics:
        results.update(_clip_scores(suite, np.concatenate(tally.clip_scores)))
    results["protocol"] = protocol(pipe, plan)
    results["per_prompt"] = _per_prompt(suite.entries, predicted)
    results["samples"] = tally.samples
    return results


def protocol(pipe, plan) -> dict:
    """Everything that fixes the images and their reading; results with different protocols are not compared."""
    import diffusers
    import torch
    import transformers

    from concept_edit._version import __version__

    suite, info, steps, guidance = plan.suite, plan.info, plan.steps, plan.guidance
    judge, extractor, reference = plan.judge, plan.extractor, plan.reference
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
        # the image change's LPIPS read at this side (ESD's script: 64): only when asked, so earlier results compare
        **({"lpips_size": plan.spec.lpips_size} if plan.spec.lpips_size is not None else {}),
        **({"suite_protocol": suite.protocol} if suite.protocol else {}),
        "versions": {
            "concept_edit": __version__,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
    }


def _image_metrics(plan, tally) -> dict:
    """Frechet distances to the reference and the unedited images, and the image change (overall, per concept)."""
    suite = plan.suite
    out: dict = {"frechet_samples": tally.count}  # Frechet is biased by n: compare runs with the same n only
    features = tally.features if tally.features is not None and tally.count >= 2 else None
    if features is not None and tally.renders is not None:
        out["frechet_to_renders"] = frechet.frechet_distance(features, tally.renders)
    elif features is not None and plan.real is not None:
        out["frechet_to_real"] = frechet.frechet_distance(features, plan.real[0])
        out["reference_images"] = plan.real[1]
    if not tally.change:
        return out
    change = np.concatenate(tally.change)

    def mean_over(idx) -> float:
        return float(change[np.asarray(idx, dtype=int)].mean())

    out["image_change"] = {"metric": tally.change_metric, "mean": float(change.mean())}
    if features is not None:
        out["frechet_to_unedited"] = frechet.frechet_distance(features, tally.unedited)
    labels = [e.label for e in suite.entries]
    groups = [e.scene.get("group") for e in suite.entries]
    if any(groups):  # artists: erased / preserved / held-out (UCE Figure 4, CAD Table 5)
        named = dict.fromkeys(g for g in groups if g)
        out["image_change_per_group"] = {g: mean_over([i for i, o in enumerate(groups) if o == g]) for g in named}
    out["image_change_per_concept"] = {
        c: mean_over([i for i, label in enumerate(labels) if label == c]) for c in suite.concepts
    }
    return out


def _clip_scores(suite: Suite, scores: np.ndarray) -> dict:
    """CLIP score of each image against its own prompt (UCE Table 4), averaged overall and per concept."""
    labels = [e.label for e in suite.entries]
    per_concept = {
        c: float(np.mean([s for s, label in zip(scores, labels, strict=True) if label == c])) for c in suite.concepts
    }
    return {"clip_score": float(scores.mean()), "clip_score_per_concept": per_concept}


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
