"""What every judge is: it reads each generated image and answers the question its suite entry asks.

A suite names its judge (`Suite.judge`, a spec string such as "shapes-oracle", "imagenet", "nudenet",
"clip" or "none") and each entry names its question (`Entry.head`: "object", "imagenet", "nudity", ...) and
the expected answer (`Entry.label`). `evaluate` counts an image as showing its concept when the judge's
answer equals the label, so one evaluation path serves the shapes world and real models alike.

A judge may say `NONE` (the image shows none of the answers it knows: an erased object that became noise)
and may decline a question (`None`: a metric-only judge, or an entry whose head is "" because the suite
asks nothing of it, as the professions suite asks only the attribute); declined images have no accuracy, only
the image metrics. An open-vocabulary judge (CLIP zero-shot) takes its candidate answers for a head from
`suite.answers[head]`. Image features for Frechet distances are not the judge's business:
the suite names its feature extractor separately (`evaluation/features.py`), so a metric-only suite (COCO)
still has its FID. What the judges with weights share (loading from the hub, `from_spec`, a protocol naming
the weights) is in `hub.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

NONE = "none"


@dataclass
class Reading:
    labels: list[str | None]  # per image: the answer to its entry's question, NONE, or None (not judged)
    attributes: list[str | None] | None = None  # per image: the answer on the suite's attribute head (bias suites)
    details: list[dict] = field(default_factory=list)  # per image, judge-specific (NudeNet: {part: [scores]})


@runtime_checkable
class Judge(Protocol):
    name: str

    def protocol(self) -> dict:
        """What decides the answers, for the results' protocol: the judge's name, weights id, package
        version, threshold. Two results with different judge protocols are not comparable."""

    def check(self, suite) -> None:
        """ValueError, before anything is generated, if an entry asks a question (head, label) this judge
        cannot answer, or the suite's attribute head is one it cannot read."""

    def read(self, images: np.ndarray, suite) -> Reading:
        """images: (N, H, W, 3) uint8, one per `suite.entries` entry, in order. `attributes` is filled when
        `suite.attribute_head` is set."""

    def summary(self, reading: Reading, suite) -> dict:
        """Suite-level figures beyond accuracy (NudeNet: detections per body part and in total); {} if none."""
