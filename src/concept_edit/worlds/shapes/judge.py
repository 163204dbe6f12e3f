"""The shapes-world oracle as a judge, as Frechet features and as UCE debias's attribute classifier.

The judge reads the heads "object", "color", "style" (each may answer "none") and "logo".

It plays the part of the papers' ResNet-50 / NudeNet / CLIP judges on ShapesSD (`concept_edit.worlds.shapes.oracle`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from concept_edit.evaluation.judges.base import Reading

LOGO_ANSWERS = ("logo", "no logo")


class ShapesOracleJudge:
    name = "shapes-oracle"

    def __init__(self, oracle=None) -> None:
        from concept_edit.worlds.shapes.oracle import Oracle

        self.oracle = oracle or Oracle.load()

    @classmethod
    def from_spec(cls, argument: str | None) -> ShapesOracleJudge:
        if argument:
            raise ValueError(f"the shapes-oracle judge takes no argument, got {argument!r}")
        return cls()

    def protocol(self) -> dict:
        from concept_edit.worlds.shapes.oracle import WEIGHTS

        return {"judge": self.name, "weights": WEIGHTS.name}

    @staticmethod
    def answers(head: str) -> tuple[str, ...]:
        from concept_edit.worlds.shapes.oracle import HEADS

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


class OracleFeatures:
    """The shapes oracle's 128-d penultimate features."""

    name = "shapes-oracle"
    metric = "oracle"  # the image change it measures is "oracle-feature-cosine-distance"

    def __init__(self) -> None:
        from concept_edit.worlds.shapes.oracle import Oracle

        self.oracle = Oracle.load()

    @classmethod
    def from_spec(cls, argument: str | None) -> OracleFeatures:
        if argument:
            raise ValueError(f"the shapes-oracle features take no argument, got {argument!r}")
        return cls()

    def protocol(self) -> dict:
        from concept_edit.worlds.shapes.oracle import WEIGHTS

        return {"features": self.name, "weights": WEIGHTS.name}

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.oracle.read(images).features.astype(np.float64)


class OracleAttributeClassifier:
    def __init__(self, oracle=None) -> None:
        from concept_edit.worlds.shapes.oracle import Oracle

        self.oracle = oracle or Oracle.load()

    @staticmethod
    def resolve(attributes: Sequence[str]) -> tuple[str, list[str]]:
        """The oracle head the attributes name, and the label each one names on it."""
        from concept_edit.worlds.shapes.oracle import HEADS

        for head, labels in HEADS.items():
            named = []
            for attribute in attributes:
                words = set(re.findall(r"[a-z]+", attribute.lower()))
                hits = [label for label in labels if label in words]
                named.append(hits[0] if len(hits) == 1 else None)
            if None not in named and len(set(named)) == len(named):
                return head, named
        known = "; ".join(f"{head}: {', '.join(labels)}" for head, labels in HEADS.items())
        raise ValueError(
            f"the shapes oracle cannot judge attributes {list(attributes)}: each must name one distinct label "
            f"of one head ({known})"
        )

    def __call__(self, images, attributes: Sequence[str]) -> list[int]:
        """The most probable of the given attributes for each image (as CLIP zero-shot over the attributes),
        -1 where the oracle's own answer is "none"."""
        from concept_edit.worlds.shapes.oracle import HEADS, NONE, OUTPUTS

        head, labels = self.resolve(attributes)
        probs = self.oracle.read(list(images)).probs[head]
        columns = [HEADS[head].index(label) for label in labels]
        chosen = probs[:, columns].argmax(1)
        chosen[probs.argmax(1) == OUTPUTS[head].index(NONE)] = -1
        return chosen.tolist()
