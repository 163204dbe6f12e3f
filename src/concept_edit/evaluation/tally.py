"""What `evaluate` keeps of each chunk of images once it is judged and measured, so that the images themselves
can go: the judge's answers, Frechet statistics (sums and Gram matrices, `frechet.py`), per-pair image change,
CLIP scores and the first few thumbnails per concept. Its size grows by a few numbers per image (the answers,
one change and one score), never by an image, so `evaluate`'s peak memory does not grow with the suite.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from concept_edit.evaluation import metrics
from concept_edit.evaluation.frechet import FrechetStats
from concept_edit.evaluation.judges import Reading
from concept_edit.evaluation.suites import Suite


@dataclass
class Chunk:
    """Entries [start, start + len) of the suite, drawn with the edits (and without, when a baseline is kept)."""

    start: int
    suite: Suite
    images: np.ndarray
    baseline: np.ndarray | None


class Tally:
    def __init__(self, plan, *, keep_images: bool = False) -> None:
        self.plan = plan
        self.labels: list[str | None] = []
        self.attributes: list[str | None] | None = None
        self.details: list[dict] = []
        self.count = 0
        wants_features = plan.extractor is not None
        self.features = FrechetStats() if wants_features else None
        self.renders = FrechetStats() if wants_features and plan.reference == "renders" else None
        self.unedited = FrechetStats() if wants_features else None  # filled only when there is a baseline
        self.change: list[np.ndarray] = []
        self.change_metric: str | None = None
        self.clip_scores: list[np.ndarray] = []
        self.samples: dict[str, list] = {}
        self.images: list[np.ndarray] | None = [] if keep_images else None

    def add(self, chunk: Chunk, reading: Reading) -> None:
        plan, images = self.plan, chunk.images
        if len(reading.labels) != len(images):
            raise RuntimeError(f"the judge answered {len(reading.labels)} of a chunk's {len(images)} images")
        if (reading.attributes is None) != (self.attributes is None) and self.labels:
            raise RuntimeError("the judge read the attribute for some chunks and not others")
        self.labels += reading.labels
        if reading.attributes is not None:
            self.attributes = (self.attributes or []) + list(reading.attributes)
        self.details += reading.details
        self.count += len(images)
        if self.features is not None:
            self.features.add(plan.extractor(images))
            if self.renders is not None:
                self.renders.add(plan.extractor(plan.world.renders(chunk.suite.entries)))
        if chunk.baseline is not None:
            metric, distances = metrics.pair_change(chunk.baseline, images, features=plan.change_features,
                                                    lpips_size=plan.spec.lpips_size)  # fmt: skip
            self.change_metric = metric
            self.change.append(distances)
            if self.unedited is not None:
                self.unedited.add(plan.extractor(chunk.baseline))
        if "clip_score" in chunk.suite.metrics:
            from concept_edit.evaluation.judges.clip import clip_score

            self.clip_scores.append(np.asarray(clip_score(images, [e.prompt for e in chunk.suite.entries])))
        self._add_samples(chunk, reading.labels)
        if self.images is not None:
            self.images.append(images)

    def _add_samples(self, chunk: Chunk, predicted) -> None:
        k = self.plan.spec.samples_per_concept
        for entry, image, answer in zip(chunk.suite.entries, chunk.images, predicted, strict=True):
            bucket = self.samples.setdefault(entry.label, [])
            if len(bucket) < k:
                bucket.append({"prompt": entry.prompt, "seed": entry.seed, "predicted": answer, "png": _png(image)})

    def reading(self) -> Reading:
        return Reading(labels=self.labels, attributes=self.attributes, details=self.details)

    def all_images(self) -> np.ndarray | None:
        if self.images is None:
            return None
        if not self.images:
            size = self.plan.info.resolution
            return np.zeros((0, size, size, 3), np.uint8)
        return np.concatenate(self.images)


SAMPLE_SIDE = 256  # report thumbnails: a 512-1024 px sample per image would make a results file of 100s of MB


def _png(image: np.ndarray) -> str:
    buf = io.BytesIO()
    picture = Image.fromarray(image)
    picture.thumbnail((SAMPLE_SIDE, SAMPLE_SIDE))  # no-op for ShapesSD's 32 px images
    picture.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
