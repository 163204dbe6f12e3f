"""Judges of generated images for UCE debiasing: `classify(images, attributes) -> attribute index per image`.

* a world's own (`World.attribute_classifiers`): the shapes world's "oracle" reads colours, objects, styles;
* `ClipZeroShotClassifier` — CLIP zero-shot over the attribute texts, as the UCE paper and code do for
  real models (default `openai/clip-vit-base-patch32`; needs the weights in the Hugging Face cache; loaded by
  `judges/clip.py`, which the suites' CLIP judge uses too).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from concept_edit.evaluation.judges.clip import DEFAULT_CLIP, load_clip


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
