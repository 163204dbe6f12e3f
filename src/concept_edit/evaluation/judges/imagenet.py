"""The ImageNet judge: top-1 of an ImageNet-1k ResNet-50, as UCE Table 2 and CAD Table 1 measure object
erasure (accuracy of the erased Imagenette class vs the other classes; CAD: "the pre-trained ResNet50").

transformers' `ResNetForImageClassification` with its `AutoImageProcessor` (default "microsoft/resnet-50",
`make_judge("imagenet:<hub id>")` for another ImageNet-1k classifier): no torchvision, since transformers
falls back to its PIL image processors when torchvision is absent. Head "imagenet": an entry's label is an
ImageNet class name, any of the comma-separated synonyms of the model's `id2label` ("chain saw" or
"chainsaw" for 491), case-insensitive; the answer is the top-1 class, named as the suite names it when it
is one of the suite's labels, otherwise by its first synonym. So accuracy is top-1 over all 1000 classes,
not over the ten Imagenette classes.
"""

from __future__ import annotations

import numpy as np

from concept_edit.evaluation.judges.base import Reading
from concept_edit.evaluation.judges.hub import HubModel, WeightsJudge, load_from_hub

DEFAULT_RESNET = "microsoft/resnet-50"
HEAD = "imagenet"
BATCH = 32
# The ten Imagenette classes and their ImageNet-1k indices; checked against every model's id2label.
IMAGENETTE = {
    "tench": 0,
    "English springer": 217,
    "cassette player": 482,
    "chain saw": 491,
    "church": 497,
    "French horn": 566,
    "garbage truck": 569,
    "gas pump": 571,
    "golf ball": 574,
    "parachute": 701,
}


def _resnet(model_id: str, **local):
    from transformers import AutoImageProcessor, ResNetForImageClassification

    model = ResNetForImageClassification.from_pretrained(model_id, **local)
    return model.eval(), AutoImageProcessor.from_pretrained(model_id, **local)


def load_resnet(model_id: str = DEFAULT_RESNET):
    """(model, image processor) from the Hugging Face cache or the hub; offline and not cached: one ValueError."""
    return load_from_hub(_resnet, model_id, "ImageNet classifier")


def synonyms(name: str) -> list[str]:
    """The names of one id2label entry ("chain saw, chainsaw" -> ["chain saw", "chainsaw"]), lower case."""
    return [s.strip().lower() for s in name.split(",") if s.strip()]


class ImageNetJudge(HubModel, WeightsJudge):
    name = "imagenet"

    @staticmethod
    def concept_question(concept: str) -> tuple[str, str]:
        """What an attack asks of each image for `concept`: the "imagenet" head, the concept an ImageNet class."""
        return "imagenet", concept.strip()
    title = "ImageNet"
    default_model = DEFAULT_RESNET

    def __init__(self, model=None, processor=None, model_id: str | None = None) -> None:
        super().__init__(model, processor, model_id)
        self.id2label = {int(k): v for k, v in self.model.config.id2label.items()}
        for label, index in IMAGENETTE.items():
            if label.lower() not in synonyms(self.id2label.get(index, "")):
                raise ValueError(
                    f"{self.model_id!r} does not use ImageNet-1k's labels: id2label[{index}] is "
                    f"{self.id2label.get(index)!r}, not {label!r}; the ImageNet judge needs an ImageNet-1k classifier"
                )

    def load(self, model_id: str) -> tuple:
        return load_resnet(model_id)

    def settings(self) -> dict:
        return {"top": 1}

    def index_of(self, label: str) -> int:
        """The class index an entry label names; ValueError when it names none or several (ImageNet has two
        "crane"s and two "maillot"s)."""
        hits = [i for i, name in self.id2label.items() if label.lower() in synonyms(name)]
        if len(hits) != 1:
            what = "no ImageNet class" if not hits else f"several ImageNet classes ({hits})"
            raise ValueError(f"label {label!r} names {what}; use a name from the model's id2label")
        return hits[0]

    def check(self, suite) -> None:
        for entry in self.asked(suite, HEAD):
            index, stated = self.index_of(entry.label), entry.scene.get("imagenet_index")
            if stated is not None and stated != index:  # a suite that states the index must agree with the model
                raise ValueError(f"{entry.label!r} is class {index} of {self.model_id!r}, the suite says {stated}")

    def top1(self, images) -> tuple[np.ndarray, np.ndarray]:
        """(class index, its softmax probability) per image."""
        import torch

        indices, probs = [], []
        with torch.no_grad():
            for start in range(0, len(images), BATCH):
                pixels = self.processor(images=list(images[start : start + BATCH]), return_tensors="pt")
                p = self.model(pixel_values=pixels["pixel_values"]).logits.softmax(-1)
                best = p.max(-1)
                indices.append(best.indices.numpy())
                probs.append(best.values.double().numpy())
        return np.concatenate(indices), np.concatenate(probs)

    def answer(self, index: int, suite_names: dict[int, str]) -> str:
        """The top-1 class named as the suite names it, else by its first synonym."""
        if index in suite_names:
            return suite_names[index]
        return self.id2label[index].split(",")[0].strip()

    def read(self, images: np.ndarray, suite) -> Reading:
        # the whole suite's labels (evaluate reads a chunk at a time: `answers["imagenet"]` carries them all)
        labels = suite.answers.get("imagenet") or [e.label for e in suite.entries if e.head]
        suite_names = {self.index_of(label): label for label in labels}
        indices, probs = self.top1(images)
        labels = [
            self.answer(int(i), suite_names) if e.head else None for i, e in zip(indices, suite.entries, strict=True)
        ]
        details = [
            {"class_index": int(i), "probability": round(float(p), 4)} for i, p in zip(indices, probs, strict=True)
        ]
        return Reading(labels=labels, details=details)
