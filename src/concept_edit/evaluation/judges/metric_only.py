"""The judge of metric-only suites (COCO captions, artists): it answers no question; the evaluation reports
the image metrics (Frechet distance, image change, CLIP score) and no accuracy."""

from __future__ import annotations

import numpy as np

from concept_edit.evaluation.judges.base import Reading


class MetricOnlyJudge:
    name = "none"

    @classmethod
    def from_spec(cls, argument: str | None) -> MetricOnlyJudge:
        if argument:
            raise ValueError(f"the 'none' judge takes no argument, got {argument!r}")
        return cls()

    def protocol(self) -> dict:
        return {"judge": self.name}

    def check(self, suite) -> None:
        if suite.attribute_head:
            raise ValueError(f"the 'none' judge reads no attribute; {suite.name} asks for {suite.attribute_head!r}")

    def read(self, images: np.ndarray, suite) -> Reading:
        return Reading(labels=[None] * len(images))

    def summary(self, reading: Reading, suite) -> dict:
        return {}
