"""The shapes-world oracle as a judge, as Frechet features and as UCE debias's attribute classifier.

The judge reads the heads "object", "color", "style" (each may answer "none") and "logo". A suite may restrict
a head to some of its labels (`suite.answers[head]`): the judge then answers the most probable of them, or
"none" where the oracle's own answer is "none" (UCE debias asks this way: which of the given colours?).

It plays the part of the papers' ResNet-50 / NudeNet / CLIP judges on ShapesSD (`concept_edit.worlds.shapes.oracle`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from concept_edit.evaluation.classifiers import AttributeClassifier
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

    def candidates(self, suite, head: str) -> tuple[str, ...]:
        """What the judge answers on `head` (besides "none"): every label it knows, or the suite's subset of them
        (`suite.answers[head]`, a tuple of labels or a dict keyed by them)."""
        known = self.answers(head)
        given = suite.answers.get(head)
        if not given:
            return known
        if head == "logo":
            raise ValueError(f"suite {suite.name}: the oracle's logo head answers {known}; it takes no candidates")
        unknown = [label for label in given if label not in known]
        if unknown:
            raise ValueError(
                f"suite {suite.name}: candidate answers {unknown} are not {head} labels the oracle knows; "
                f"choose among {', '.join(known)}"
            )
        return tuple(given)

    def check(self, suite) -> None:
        if suite.attribute_head:
            self.candidates(suite, suite.attribute_head)
        for entry in suite.entries:
            known = self.candidates(suite, entry.head)
            if entry.label not in known:
                raise ValueError(
                    f"suite {suite.name}: label {entry.label!r} (prompt {entry.prompt!r}) is not a {entry.head} the "
                    f"oracle knows; choose one of {', '.join(known)}"
                )

    def _labels(self, reading, suite, head: str) -> list[str]:
        if not suite.answers.get(head):
            return reading.labels(head)
        from concept_edit.worlds.shapes.oracle import NONE, OUTPUTS

        labels = self.candidates(suite, head)
        probs = reading.probs[head]
        chosen = probs[:, [OUTPUTS[head].index(label) for label in labels]].argmax(1)
        none = probs.argmax(1) == OUTPUTS[head].index(NONE)  # the oracle's own answer
        return [NONE if is_none else labels[k] for k, is_none in zip(chosen, none, strict=True)]

    def read(self, images: np.ndarray, suite) -> Reading:
        reading = self.oracle.read(images)
        labels = {head: self._labels(reading, suite, head) for head in {e.head for e in suite.entries}}
        attributes = self._labels(reading, suite, suite.attribute_head) if suite.attribute_head else None
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


class OracleAttributeClassifier(AttributeClassifier):
    """UCE debias's classifier on ShapesSD: the oracle judge restricted to the labels the attributes name, so
    each image gets the most probable of the given attributes (as CLIP zero-shot over the attributes), -1
    where the oracle's own answer is "none"."""

    def __init__(self, oracle=None) -> None:
        super().__init__(ShapesOracleJudge(oracle))

    @property
    def oracle(self):
        return self.judge.oracle

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

    def question(self, attributes: Sequence[str]) -> tuple[str, tuple[str, ...]]:
        head, labels = self.resolve(attributes)
        return head, tuple(labels)
