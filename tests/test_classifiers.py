"""Debias judges: CLIP zero-shot plumbing (tiny random CLIP) and the shapes oracle over a subset of labels."""

import numpy as np
import torch
from PIL import Image

from concept_edit.evaluation.classifiers import ClipZeroShotClassifier, make_classifier
from concept_edit.worlds.shapes.judge import OracleAttributeClassifier


def tiny_clip(tokenizer_dir):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": tokenizer.model_max_length,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    return CLIPModel(config), processor


def test_clip_zero_shot_returns_each_images_best_attribute(clip_tokenizer_dir):
    """A stand-in CLIP whose logits are known: image i matches attribute (i + 1) mod 2. The real processor
    runs, so the texts and images must reach the model in order."""
    _, processor = tiny_clip(clip_tokenizer_dir)

    class KnownLogits(torch.nn.Module):
        def forward(self, input_ids, pixel_values, **kwargs):
            assert input_ids.shape[0] == 2 and pixel_values.shape[0] == 5
            logits = torch.zeros(5, 2)
            logits[torch.arange(5), (torch.arange(5) + 1) % 2] = 1.0
            return type("Out", (), {"logits_per_image": logits})()

    classifier = ClipZeroShotClassifier(KnownLogits(), processor)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(5)]
    assert classifier(images, ["male doctor", "female doctor"]) == [1, 0, 1, 0, 1]


def test_clip_zero_shot_runs_a_real_tiny_clip(clip_tokenizer_dir):
    model, processor = tiny_clip(clip_tokenizer_dir)
    images = [Image.new("RGB", (32, 32), c) for c in ("red", "blue", "white")]
    labels = ClipZeroShotClassifier(model, processor)(images, ["male doctor", "female doctor", "a car"])
    assert len(labels) == 3 and all(isinstance(x, int) and 0 <= x < 3 for x in labels)


def test_oracle_classifier_chooses_among_the_given_attributes():
    from concept_edit.worlds.shapes.world import Scene, render

    images = [render(Scene("heart", c, "plain", i)) for i, c in enumerate(["red", "blue", "green"])]
    classify = OracleAttributeClassifier()
    assert classify(images, ["red", "blue", "green"]) == [0, 1, 2]
    assert classify(images[:2], ["a blue heart", "a red heart"]) == [1, 0]


def test_oracle_classifier_answers_minus_one_for_an_image_without_an_object():
    import numpy as np

    from concept_edit.worlds.shapes.world import Scene, _background, render

    empty = _background("plain", np.random.default_rng(3)).astype(np.uint8)
    images = [render(Scene("heart", "red", "plain", 0)), empty]
    assert OracleAttributeClassifier()(images, ["red", "blue"]) == [0, -1]


def test_make_classifier_defaults_and_errors(sd):
    import pytest

    with pytest.raises(ValueError, match="unknown classifier"):
        make_classifier("resnet", sd)
    with pytest.raises(ValueError, match="cannot load the CLIP classifier"):
        make_classifier(None, sd)  # not a shapes model -> CLIP, which is not cached offline
