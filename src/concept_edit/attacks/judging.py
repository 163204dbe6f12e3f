"""How an attack reads its images: one question (does it show the concept?) put to a judge of the one judge
interface (`concept_edit.evaluation.judges.Judge`): the model's world's own, a real model's suite judge, or a
function (tests, notebooks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from concept_edit.attacks.drawing import Item


class ConceptJudge:
    """The one question an attack asks of every image, put to a judge of the one judge interface
    (`concept_edit.evaluation.judges.Judge`): does it read `label` on `head`? `read(images)` gives each image's
    answer ("other" where the judge declines); an image shows the concept when its answer is `label`."""

    def __init__(self, judge, head: str, label: str, description: str | None = None) -> None:
        self.judge, self.head, self.label = judge, head, label
        self.judge.check(self._suite(1))  # a label the judge does not know is refused before any drawing
        self.description = description or f"{judge.name}, {head} reads {label!r}"

    def _suite(self, n: int):
        from concept_edit.evaluation.suites import Entry, Suite

        entries = tuple(Entry("", self.label, 0, self.head) for _ in range(n))
        return Suite("probe", 1, "one question per image", entries, judge=self.judge.name, reference=None)

    def read(self, images: np.ndarray) -> list[str]:
        if not len(images):
            return []
        return [label or "other" for label in self.judge.read(images, self._suite(len(images))).labels]


def suite_judge(spec: str, concept: str, judge=None) -> ConceptJudge:
    """A judge of the evaluation suites asked one question of every image, the one it declares for a concept
    (`concept_question`): NudeNet ("nudity": the concept is read when it answers "nude"), the ImageNet classifier
    ("imagenet": the concept is an ImageNet class name). What a real model's attack is judged by, as its suite
    judges it. The question is known before any weight loads."""
    from concept_edit.evaluation.judges import JUDGES, judge_class, make_judge

    question = getattr(judge_class(spec), "concept_question", None)
    if question is None:
        able = [name for name in JUDGES if hasattr(judge_class(name), "concept_question")]
        raise ValueError(f"probe reads real models with --judge {' or '.join(able)}, not {spec!r}")
    head, label = question(concept)
    return ConceptJudge(judge or make_judge(spec), head, label, f"{spec}, {head} reads {label!r}")


def world_judge(world, concept: str, judge=None) -> ConceptJudge | None:
    """The world's own judge asked about `concept` (the shapes oracle's object, colour or style head, or its logo
    detector); None for a world without one. ValueError when the world's judge cannot read the concept."""
    question = world.concept_question(concept)
    if question is None or world.judge is None:
        return None
    from concept_edit.evaluation.judges import make_judge

    head, label = question
    return ConceptJudge(judge or make_judge(world.judge), head, label, f"{world.judge}, {head} head reads {label!r}")


class _BooleanJudge:
    """A judge of the one interface from a function of the (N, H, W, 3) uint8 images giving one bool per image."""

    name = "function"

    def __init__(self, fn: Callable[[np.ndarray], Sequence[bool]], description: str) -> None:
        self.fn, self.description = fn, description

    def protocol(self) -> dict:
        return {"judge": self.name, "description": self.description}

    def check(self, suite) -> None:
        return None

    def read(self, images: np.ndarray, suite):
        from concept_edit.evaluation.judges import Reading

        hits = list(self.fn(images))
        if len(hits) != len(images):
            raise ValueError(f"the judge returned {len(hits)} readings for {len(images)} images")
        return Reading(labels=["concept" if hit else "other" for hit in hits])

    def summary(self, reading, suite) -> dict:
        return {}


class FunctionJudge(ConceptJudge):
    """A concept judge from a function of the images returning one bool per image (tests, notebooks)."""

    def __init__(self, fn: Callable[[np.ndarray], Sequence[bool]], description: str = "a custom judge") -> None:
        super().__init__(_BooleanJudge(fn, description), "concept", "concept", description)


def judged_rows(judge: ConceptJudge, items: Sequence[Item], images: np.ndarray) -> list[dict]:
    """One row per item: its prompt and seed, what the judge read and whether that is the concept."""
    labels = judge.read(images)
    return [
        {"prompt": item.prompt, "seed": item.seed, "success": label == judge.label, "read": label}
        for item, label in zip(items, labels, strict=True)
    ]
