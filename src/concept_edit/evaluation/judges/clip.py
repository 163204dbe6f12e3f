"""CLIP for real-model evaluation: the zero-shot judge, image features for Frechet distances, and CLIP score.

Everything here runs on transformers' `CLIPModel` / `CLIPProcessor` (no torchvision), default
"openai/clip-vit-base-patch32" as in UCE's `eval-scripts/CLIP_classify.py`. `load_clip` is the one place
that loads CLIP weights (the debias classifier in `evaluation/classifiers.py` uses it too), so an offline
machine without the weights cached gets one error naming the download.

* `ClipJudge` (UCE Tables 3, D.1, D.2: gender/race ratios per profession): for a head h the candidate
  answers are `suite.answers[h]`, either a tuple of labels that are also the texts CLIP reads
  (("a man", "a woman"), as UCE's script passes its attributes verbatim) or a dict {label: text}
  ({"male": "a photo of a man", "female": "a photo of a woman"}) when the answer and the text differ.
  The answer is the candidate of highest cosine similarity (the argmax of CLIP's logits).
* `ClipFeatures`: CLIP image embeddings (the projected embedding, not normalised), the torchvision-free
  alternative to Inception for Frechet distances (the "clip_vit_b_32" features of clean-fid).
* `clip_score`: per image 100 * max(cos(E_image, E_text), 0), the CLIP score as torchmetrics defines it
  (`torchmetrics.multimodal.CLIPScore`, after Hessel et al. 2021 with weight 100 instead of 2.5), which
  UCE Table 4 and CAD Table 2 report. Computed here rather than with torchmetrics because its public
  `clip_score` returns only the batch mean, clamped after averaging, and loads the model by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from concept_edit.evaluation.judges.base import Reading
from concept_edit.evaluation.judges.hub import HubModel, WeightsJudge, load_from_hub

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
BATCH = 32


@lru_cache(maxsize=2)  # the judge, the features and the CLIP score of one run share one model
def _cached(model_id: str, **local):
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(model_id, use_safetensors=True, **local).eval()
    return model, CLIPProcessor.from_pretrained(model_id, **local)


def load_clip(model_id: str = DEFAULT_CLIP, role: str = "CLIP model", alternative: str = ""):
    """(CLIPModel, CLIPProcessor) from the Hugging Face cache or the hub; offline and not cached: one ValueError
    naming the download (`alternative` adds what the caller can use instead)."""
    return load_from_hub(_cached, model_id, role, alternative)


def _pooled(output):
    # transformers < 5 returns the projected embeddings, >= 5 an output whose pooler_output holds them
    return output if hasattr(output, "shape") else output.pooler_output


def image_embeddings(model, processor, images) -> np.ndarray:
    """(N, d) float64 projected CLIP image embeddings of (N, H, W, 3) uint8 images (or PIL images)."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(images), BATCH):
            pixels = processor(images=list(images[start : start + BATCH]), return_tensors="pt")["pixel_values"]
            out.append(_pooled(model.get_image_features(pixel_values=pixels)).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.projection_dim))


def text_embeddings(model, processor, texts: Sequence[str]) -> np.ndarray:
    """(M, d) float64 projected CLIP text embeddings; texts longer than the model's context are truncated."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(texts), BATCH):
            tokens = processor.tokenizer(
                list(texts[start : start + BATCH]), padding=True, truncation=True, return_tensors="pt"
            )
            features = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            out.append(_pooled(features).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.projection_dim))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def clip_score(images, prompts: Sequence[str], model=None) -> np.ndarray:
    """Per image 100 * max(cos(E_image, E_prompt), 0) (torchmetrics' CLIPScore definition, per pair).

    model: None (the default CLIP), a hub id, or a (CLIPModel, CLIPProcessor) pair."""
    if len(images) != len(prompts):
        raise ValueError(f"CLIP score needs one prompt per image, got {len(images)} images and {len(prompts)} prompts")
    clip, processor = model if isinstance(model, tuple) else load_clip(model or DEFAULT_CLIP)
    cos = (_unit(image_embeddings(clip, processor, images)) * _unit(text_embeddings(clip, processor, prompts))).sum(1)
    return 100 * np.maximum(cos, 0.0)


def candidates(suite, head: str) -> tuple[list[str], list[str]]:
    """(answers, texts CLIP reads) for a head: `suite.answers[head]` as a tuple of labels or a {label: text} dict."""
    given = suite.answers.get(head)
    if not given:
        raise ValueError(
            f"suite {suite.name!r} gives the CLIP judge no candidate answers for head {head!r} "
            f"(set suite.answers[{head!r}] to a tuple of labels or a {{label: text}} dict)"
        )
    if isinstance(given, dict):
        return list(given), list(given.values())
    return list(given), list(given)


class _Clip(HubModel):
    """A CLIP model and processor, given or loaded by `load_clip` under the caller's `role`."""

    default_model = DEFAULT_CLIP
    role = "CLIP model"

    def load(self, model_id: str) -> tuple:
        return load_clip(model_id, self.role)

    def unnamed(self, model) -> str:
        return DEFAULT_CLIP  # a CLIP passed in without its id is named as the default model (as it always was)


class ClipJudge(_Clip, WeightsJudge):
    """CLIP zero-shot over the suite's candidate answers (see the module docstring)."""

    name = "clip"
    title = "CLIP"
    role = "CLIP judge"

    def _heads(self, suite) -> list[str]:
        heads = {e.head for e in suite.entries if e.head}
        return sorted(heads | ({suite.attribute_head} if suite.attribute_head else set()))

    def check(self, suite) -> None:
        for head in self._heads(suite):
            answers, _ = candidates(suite, head)
            if len(answers) < 2:
                raise ValueError(f"zero-shot needs at least two candidates for head {head!r}, got {answers}")
        for entry in suite.entries:
            if entry.head and entry.label not in candidates(suite, entry.head)[0]:
                raise ValueError(
                    f"entry {entry.prompt!r} expects {entry.label!r}, which is not a candidate answer for head "
                    f"{entry.head!r}: {candidates(suite, entry.head)[0]}"
                )

    def _answer(self, image_emb: np.ndarray, suite, head: str) -> list[str]:
        answers, texts = candidates(suite, head)
        text_emb = _unit(text_embeddings(self.model, self.processor, texts))
        return [answers[k] for k in (_unit(image_emb) @ text_emb.T).argmax(1)]

    def read(self, images: np.ndarray, suite) -> Reading:
        emb = image_embeddings(self.model, self.processor, images)
        by_head = {head: self._answer(emb, suite, head) for head in self._heads(suite)}
        labels = [by_head[e.head][i] if e.head else None for i, e in enumerate(suite.entries)]
        attributes = by_head[suite.attribute_head] if suite.attribute_head else None
        return Reading(labels=labels, attributes=attributes)


class ClipFeatures(_Clip):
    """CLIP image embeddings for Frechet distances: `(N, H, W, 3) uint8 -> (N, d) float64`."""

    name = "clip"
    role = "CLIP feature extractor"

    def protocol(self) -> dict:
        return {"features": self.name, **self.weights()}

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return image_embeddings(self.model, self.processor, images)
