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

import dataclasses
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from concept_edit.edit import Edit, applied
from concept_edit.evaluation import metrics
from concept_edit.evaluation.image_store import ImageStore
from concept_edit.evaluation.judges import make_judge
from concept_edit.evaluation.measure import measure
from concept_edit.evaluation.references import check_reference, folder_stats
from concept_edit.evaluation.suites import Suite
from concept_edit.evaluation.tally import Chunk, Tally
from concept_edit.generation import generate, to_array
from concept_edit.models.loading import model_info
from concept_edit.validation import check_number
from concept_edit.worlds import registered, world_of

log = logging.getLogger(__name__)
REQUIRED_KEYS = ("suite", "model", "edits", "seed", "per_concept", "mean_accuracy")


@dataclass(frozen=True)
class EvaluationSpec:
    """What one evaluation measures: a suite on a model with edits applied, and how it is read.

    `judge`, `features` and `reference` override the suite's ("suite": keep it; a judge may be a `Judge` or a spec
    string); `steps` and `guidance` default to the suite's protocol (the paper's), else the model's; the image
    change is measured against the unedited model when edits are given and `compute_baseline`."""

    suite: Suite
    edits: Sequence[Edit] = ()
    target: str | None = None
    judge: object = None
    features: str | None = "suite"
    reference: str | None = "suite"
    steps: int | None = None
    guidance: float | None = None
    samples_per_concept: int = 4
    compute_baseline: bool = True
    allow_repeat: bool = False
    batch_size: int = 32
    chunk_size: int = 256  # images drawn, judged and measured at a time: memory does not grow with the suite
    lpips_size: int | None = None  # LPIPS on images resized to this side (ESD's script: 64); None: as drawn
    reference_resize: bool = False  # a reference folder of mixed sizes: centre-crop and resize (else refused)

    def __post_init__(self) -> None:
        check_number("batch_size", self.batch_size, low=1, integer=True)
        check_number("chunk_size", self.chunk_size, low=1, integer=True)
        if self.lpips_size is not None:
            check_number("lpips_size", self.lpips_size, low=32, integer=True)  # LPIPS' AlexNet needs >= 31 px


@dataclass
class Plan:
    """The spec resolved against the model, every check passed: what the draw, judge and measure stages use."""

    spec: EvaluationSpec
    suite: Suite
    info: object
    world: object
    judge: object
    extractor: object
    change_features: object
    reference: str | None
    real: tuple | None
    steps: int
    guidance: float
    wants_baseline: bool


def evaluate(
    pipe,
    suite: Suite | EvaluationSpec,
    *,
    baseline_images: np.ndarray | None = None,
    store=None,
    progress: bool = True,
    keep_images: bool = True,
    **options,
) -> tuple[dict | None, np.ndarray | None]:
    """Draw every suite entry (with the edits applied), judge it, measure it: `prepare` -> `draw` (chunks of
    `chunk_size` entries) -> `read` and tally each chunk -> `measure`. `suite` is an `EvaluationSpec`, or a suite
    with the spec's fields as keyword options.

    Returns (results, images); images is None with `keep_images=False`, and then nothing held grows with the
    suite but a few numbers per image (the CLI evaluates so). The image change is measured against
    `baseline_images` (the unedited model's images for the same entries) or, when edits are given and
    `compute_baseline`, against a fresh unedited drawing. `store` (an `ImageStore` or a folder) keeps every
    generated image so a second run, or an interrupted one, draws only what is missing; under `accelerate
    launch` every process calls `evaluate` alike, each draws its share, and only the main process gets
    (results, images): the others get (None, None).
    """
    if isinstance(suite, EvaluationSpec):
        if options:
            raise TypeError(f"evaluate: give options in the EvaluationSpec, not as keywords ({', '.join(options)})")
        spec = suite
    else:
        known = {f.name for f in dataclasses.fields(EvaluationSpec)} - {"suite"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"evaluate: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        spec = EvaluationSpec(suite, **options)
    plan = prepare(pipe, spec, baseline_given=baseline_images is not None)
    if baseline_images is not None and len(baseline_images) != len(plan.suite.entries):
        raise ValueError(f"{len(baseline_images)} baseline images for {len(plan.suite.entries)} suite entries")
    tally, main = Tally(plan, keep_images=keep_images), True
    for chunk in draw(pipe, plan, baseline_images=baseline_images, store=store, progress=progress):
        if chunk is None:  # another process of `accelerate launch` drew its share; the main process scores
            main = False
            continue
        tally.add(chunk, plan.judge.read(chunk.images, chunk.suite))
        del chunk
    if not main:
        return None, None
    return measure(pipe, plan, tally), tally.all_images()


def prepare(pipe, spec: EvaluationSpec, *, baseline_given: bool = False) -> Plan:
    """Resolve the spec against the model and its world; everything that would fail after hours of drawing
    (an unknown target, a judge that cannot answer, a missing reference folder, overlong prompts) fails here."""
    suite = spec.suite
    if not suite.entries:
        raise ValueError(f"the {suite.name} suite has no entries: nothing to evaluate")
    info, world = model_info(pipe), world_of(pipe)
    features = (suite.features or world.features) if spec.features == "suite" else spec.features
    reference = suite.reference if spec.reference == "suite" else spec.reference
    judge_spec = spec.judge if isinstance(spec.judge, str) else suite.judge or world.judge
    if spec.judge is None or isinstance(spec.judge, str):  # a judge object given in Python is the caller's call
        _check_judge_world(suite, judge_spec, world, info)
    if reference == "renders" and world.renders(suite.entries[:1]) is None:
        raise ValueError(
            f"true renders exist only for a world that can draw its prompts (ShapesSD); {info.spec!r} needs another "
            "--reference"
        )
    if spec.target is not None and spec.target not in suite.concepts:
        raise ValueError(
            f"target {spec.target!r} is not a concept of {suite.name}; its concepts: {', '.join(suite.concepts)}"
        )
    check_reference(reference)
    if spec.guidance is not None and any(e.guidance is not None for e in suite.entries):  # the user's scale wins
        suite = dataclasses.replace(suite, entries=tuple(dataclasses.replace(e, guidance=None) for e in suite.entries))
    judge = spec.judge if spec.judge is not None and not isinstance(spec.judge, str) else make_judge(judge_spec)
    check_suite(pipe, suite, judge)
    extractor = _extractor(features)
    # the image change without LPIPS: the suite's features, else the world's own (the shapes oracle's)
    change_features = extractor or (_extractor(world.features) if world.features else None)
    # The unedited images: for the image change and the Frechet distance to them, where the suite has a
    # reference at all (shapes renders, unedited, real images); I2P, nudity and professions report neither.
    wants_baseline = not baseline_given and bool(spec.edits) and spec.compute_baseline and reference is not None
    real = _check_before_drawing(pipe, spec, suite, reference, extractor, change_features,
                                 wants_baseline or baseline_given)  # fmt: skip
    # The paper's steps and guidance when the suite pins them (imagenette: UCE's 100 steps), else the model's.
    steps = suite.protocol.get("steps", info.default_steps) if spec.steps is None else spec.steps
    guidance = suite.protocol.get("guidance", info.default_guidance) if spec.guidance is None else spec.guidance
    return Plan(spec, suite, info, world, judge, extractor, change_features, reference, real, steps, guidance,
                wants_baseline)  # fmt: skip


def draw(pipe, plan: Plan, *, baseline_images=None, store=None, progress: bool = True) -> Iterator[Chunk | None]:
    """The suite's entries in chunks of `chunk_size`: each drawn with the edits, and without them when the plan
    wants a baseline (else the chunk's share of `baseline_images`). Under `accelerate launch` a process that is
    not the main one gets None for every chunk (its share is in the store)."""
    spec, entries = plan.spec, plan.suite.entries
    starts = range(0, len(entries), spec.chunk_size)
    # a judge that names its answers from the suite's labels (ImageNet) gets them all, not the chunk's
    labels = list(dict.fromkeys(e.label for e in entries if e.head == "imagenet"))
    whole = {**plan.suite.answers, "imagenet": labels} if labels and "imagenet" not in plan.suite.answers else None
    outer = len(starts) > 1  # one bar over the chunks; each chunk's own bars only when there is one chunk
    if store is not None and not isinstance(store, ImageStore):
        store = ImageStore(store)  # one object for every chunk: it parses its index once, then what is appended
    if store is not None and outer:  # the chunks' own announcements are quiet: say the whole once
        from concept_edit.evaluation.store import announce

        passes = (spec.edits, ()) if plan.wants_baseline else (spec.edits,)
        announce(pipe, [e.prompt for e in entries], [e.seed for e in entries], store=store, passes=passes,
                 steps=plan.steps, guidance=plan.guidance, guidances=[e.guidance for e in entries],
                 progress=progress)  # fmt: skip
    bar = tqdm(total=len(entries), desc="evaluate", unit="image", disable=not (progress and outer), dynamic_ncols=True)
    with bar:
        for start in starts:
            part = dataclasses.replace(plan.suite, entries=entries[start : start + spec.chunk_size])
            if whole is not None:
                part = dataclasses.replace(part, answers=whole)

            def drawn(with_edits: Sequence[Edit], part=part) -> np.ndarray | None:
                return _generate(pipe, part, with_edits, plan.steps, plan.guidance, store, spec.batch_size,
                                 progress and not outer, spec.allow_repeat)  # fmt: skip

            images = drawn(spec.edits)
            if plan.wants_baseline:
                baseline = drawn(())
            else:
                baseline = None if baseline_images is None else baseline_images[start : start + len(part.entries)]
            bar.update(len(part.entries))
            yield None if images is None else Chunk(start, part, images, baseline)
            del images, baseline  # hold one chunk, not two, while the next is drawn


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


def _check_before_drawing(pipe, spec, suite: Suite, reference, features, change_features, image_change: bool):
    """What would fail after hours of drawing fails now: the reference folder's images (read into Frechet
    statistics, returned with their count), the image-change metric, the CLIP score's model."""
    real = None
    if reference and reference.startswith("folder:"):
        real = folder_stats(reference.partition(":")[2], model_info(pipe).resolution, features,
                            resize=spec.reference_resize, chunk_size=spec.chunk_size)  # fmt: skip
    if image_change and change_features is None and not metrics.lpips_available():
        raise ValueError(
            f"the {suite.name} suite measures the image change against the unedited model, which needs LPIPS "
            "(pip install 'concept-edit[eval]') or a feature distance (--features clip); or pass --no-baseline"
        )
    if "clip_score" in suite.metrics:
        from concept_edit.evaluation.judges.clip import load_clip

        load_clip(role="CLIP-score model")
    return real


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
