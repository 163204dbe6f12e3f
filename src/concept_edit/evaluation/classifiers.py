"""Judges of generated images for UCE debiasing: `classify(images, attributes) -> attribute index per image`.

* `OracleAttributeClassifier` — the shapes-world oracle: each attribute must name a label of one oracle
  head ("red", "blue" -> colour head; "a red heart" works too); each image gets the most probable of the
  given attributes, or -1 when the oracle reads it as showing none on that head (no object, a blend);
* `ClipZeroShotClassifier` — CLIP zero-shot over the attribute texts, as the UCE paper and code do for
  real models (default `openai/clip-vit-base-patch32`; needs the weights in the Hugging Face cache; loaded by
  `judges/clip.py`, which the suites' CLIP judge uses too).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from concept_edit.evaluation.judges.clip import DEFAULT_CLIP, load_clip
from concept_edit.models.loading import model_info


class OracleAttributeClassifier:
    def __init__(self, oracle=None) -> None:
        from concept_edit.shapes.oracle import Oracle

        self.oracle = oracle or Oracle.load()

    @staticmethod
    def resolve(attributes: Sequence[str]) -> tuple[str, list[str]]:
        """The oracle head the attributes name, and the label each one names on it."""
        from concept_edit.shapes.oracle import HEADS

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
        from concept_edit.shapes.oracle import HEADS, NONE, OUTPUTS

        head, labels = self.resolve(attributes)
        probs = self.oracle.read(list(images)).probs[head]
        columns = [HEADS[head].index(label) for label in labels]
        chosen = probs[:, columns].argmax(1)
        chosen[probs.argmax(1) == OUTPUTS[head].index(NONE)] = -1
        return chosen.tolist()


class ClipZeroShotClassifier:
    def __init__(self, model, processor, prompt: str = "{}") -> None:
        self.model = model.eval()
        self.processor = processor
        self.prompt = prompt

    @classmethod
    def from_pretrained(cls, model_id: str = DEFAULT_CLIP) -> ClipZeroShotClassifier:
        # the one CLIP loader (`judges/clip.py`): same cache, same offline error as the CLIP judge
        return cls(*load_clip(model_id, "CLIP classifier", " or pass --classifier oracle for ShapesSD"))

    def __call__(self, images, attributes: Sequence[str]) -> list[int]:
        import torch

        texts = [self.prompt.format(a) for a in attributes]
        inputs = self.processor(text=texts, images=list(images), return_tensors="pt", padding=True)
        with torch.no_grad():
            logits = self.model(**inputs).logits_per_image
        return np.asarray(logits.argmax(-1)).tolist()


def make_classifier(spec: str | None, pipe):
    """'oracle', 'clip' or 'clip:<hub id>'; by default the oracle for shapes-world models, CLIP otherwise."""
    if spec is None:
        spec = "oracle" if model_info(pipe).world == "shapes" else "clip"
    if spec == "oracle":
        return OracleAttributeClassifier()
    if spec == "clip" or spec.startswith("clip:"):
        return ClipZeroShotClassifier.from_pretrained(spec.partition(":")[2] or DEFAULT_CLIP)
    raise ValueError(f"unknown classifier {spec!r}; use 'oracle', 'clip' or 'clip:<hub id>'")
