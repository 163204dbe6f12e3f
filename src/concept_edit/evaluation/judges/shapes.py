"""The shapes-world oracle as a judge: heads "object", "color", "style" (each may answer "none") and "logo".

It plays the part of the papers' ResNet-50 / NudeNet / CLIP judges on ShapesSD (`concept_edit.shapes.oracle`).
"""

from __future__ import annotations

import numpy as np

from concept_edit.evaluation.judges.base import Reading

LOGO_ANSWERS = ("logo", "no logo")


class ShapesOracleJudge:
    name = "shapes-oracle"

    def __init__(self, oracle=None) -> None:
        from concept_edit.shapes.oracle import Oracle

        self.oracle = oracle or Oracle.load()

    @classmethod
    def from_spec(cls, argument: str | None) -> ShapesOracleJudge:
        if argument:
            raise ValueError(f"the shapes-oracle judge takes no argument, got {argument!r}")
        return cls()

    def protocol(self) -> dict:
        from concept_edit.shapes.oracle import WEIGHTS

        return {"judge": self.name, "weights": WEIGHTS.name}

    @staticmethod
    def answers(head: str) -> tuple[str, ...]:
        from concept_edit.shapes.oracle import HEADS

        if head == "logo":
            return LOGO_ANSWERS
        if head not in HEADS:
            raise ValueError(f"the shapes oracle reads the heads {', '.join([*HEADS, 'logo'])}; not {head!r}")
        return HEADS[head]

    def check(self, suite) -> None:
        if suite.attribute_head:
            self.answers(suite.attribute_head)
        for entry in suite.entries:
            known = self.answers(entry.head)
            if entry.label not in known:
                raise ValueError(
                    f"suite {suite.name}: label {entry.label!r} (prompt {entry.prompt!r}) is not a {entry.head} the "
                    f"oracle knows; choose one of {', '.join(known)}"
                )

    def read(self, images: np.ndarray, suite) -> Reading:
        reading = self.oracle.read(images)
        labels = {head: reading.labels(head) for head in {e.head for e in suite.entries}}
        attributes = reading.labels(suite.attribute_head) if suite.attribute_head else None
        return Reading(labels=[labels[e.head][i] for i, e in enumerate(suite.entries)], attributes=attributes)

    def summary(self, reading: Reading, suite) -> dict:
        return {}
