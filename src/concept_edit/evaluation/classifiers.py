"""UCE debias's classifiers of generated images, `classify(images, attributes) -> attribute index per image`
(-1: none of them), as adapters over the one judge interface (`judges/base.py`) that evaluation and the attacks
use too:

* `AttributeReader(judge, head, answers)`: one question put to a judge through a one-question suite, whose
  candidate answers on `head` are `answers` (`suite.answers[head]`); `read(images)` gives each image's
  index in `answers`, -1 where the judge answers something else (its NONE).
* `AttributeClassifier`: `classify(images, attributes)` over a judge; each call turns the attributes into
  the question (`question(attributes) -> (head, answers)`) and reads the images with an `AttributeReader`.
* a world's own (`World.attribute_classifiers`): the shapes world's "oracle" judge chooses among the colours,
  objects or styles the attributes name;
* `ClipZeroShotClassifier` — CLIP zero-shot over the attribute texts, as the UCE paper and code do for
  real models (default `openai/clip-vit-base-patch32`; needs the weights in the Hugging Face cache): the CLIP
  judge (`judges/clip.py`) asked one head whose candidate answers are the attribute texts.
"""

from __future__ import annotations

from collections.abc import Sequence

from concept_edit.evaluation.judges.clip import DEFAULT_CLIP, ClipJudge, load_clip

CLIP_HEAD = "attribute"  # the one head the CLIP judge is asked, its candidates the attribute texts


class AttributeReader:
    """Which of `answers` each image shows on `head`, as `judge` reads it.

    `answers`: a tuple of labels, or {label: text} for an open-vocabulary judge that reads texts other than
    its labels (CLIP); they reach the judge as the suite's candidate answers, so CLIP chooses among them and
    a closed judge (the shapes oracle) is restricted to them. ValueError, before any image is read, when the
    judge cannot answer the question."""

    def __init__(self, judge, head: str, answers: Sequence[str] | dict[str, str]) -> None:
        self.judge, self.head, self.answers = judge, head, answers
        self.labels = list(answers)
        if not self.labels:
            raise ValueError(f"no answers to choose among on head {head!r}")
        self.judge.check(self._suite(1))

    def _suite(self, n: int):
        from concept_edit.evaluation.suites import Entry, Suite

        entries = tuple(Entry("", self.labels[0], 0, self.head) for _ in range(n))
        return Suite(
            "attributes",
            1,
            "one question per image",
            entries,
            judge=self.judge.name,
            reference=None,
            answers={self.head: self.answers},
        )

    def read(self, images) -> list[int]:
        """Per image the index of its answer in `answers` (the first, should two be equal), -1 for any other."""
        if not len(images):
            return []
        index: dict[str, int] = {}
        for k, label in enumerate(self.labels):
            index.setdefault(label, k)
        return [index.get(label, -1) for label in self.judge.read(images, self._suite(len(images))).labels]


class AttributeClassifier:
    """`classify(images, attributes) -> index per image (-1: none)` over a judge of the one interface."""

    def __init__(self, judge) -> None:
        self.judge = judge

    def question(self, attributes: Sequence[str]) -> tuple[str, Sequence[str] | dict[str, str]]:
        """(head, answers): the question whose answers stand, in order, for the attributes."""
        raise NotImplementedError

    def __call__(self, images, attributes: Sequence[str]) -> list[int]:
        return AttributeReader(self.judge, *self.question(attributes)).read(images)


class ClipZeroShotClassifier(AttributeClassifier):
    """The attribute whose text (`prompt` formats it) CLIP finds most similar to each image."""

    def __init__(self, model, processor, prompt: str = "{}", model_id: str | None = None) -> None:
        super().__init__(ClipJudge(model.eval(), processor, model_id))
        self.prompt = prompt

    @property
    def model(self):
        return self.judge.model

    @property
    def processor(self):
        return self.judge.processor

    @classmethod
    def from_pretrained(cls, model_id: str = DEFAULT_CLIP) -> ClipZeroShotClassifier:
        # the one CLIP loader (`judges/clip.py`): same cache, same offline error as the CLIP judge
        model, processor = load_clip(model_id, "CLIP classifier", "; for ShapesSD, pass --classifier oracle instead")
        return cls(model, processor, model_id=model_id)

    def question(self, attributes: Sequence[str]) -> tuple[str, tuple[str, ...]]:
        return CLIP_HEAD, tuple(self.prompt.format(a) for a in attributes)


def make_classifier(spec: str | None, pipe):
    """'clip', 'clip:<hub id>' or a world's own ('oracle' for ShapesSD); by default the model's world's choice."""
    import importlib

    from concept_edit.worlds import registered, world_of

    if spec is None:
        spec = world_of(pipe).default_classifier()
    if spec == "clip" or spec.startswith("clip:"):
        return ClipZeroShotClassifier.from_pretrained(spec.partition(":")[2] or DEFAULT_CLIP)
    known = registered("attribute_classifiers")
    if spec not in known:
        choices = ", ".join(repr(k) for k in known)
        raise ValueError(f"unknown classifier {spec!r}; use {choices}, 'clip' or 'clip:<hub id>'")
    module, _, cls = known[spec].partition(":")
    return getattr(importlib.import_module(module), cls)()
