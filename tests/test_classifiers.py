"""Debias classifiers, adapters over the one judge interface: CLIP zero-shot against known embeddings and against
CLIP's own forward pass (tiny random CLIP), the shapes oracle over a subset of labels, and the answers the
classifiers gave before they became adapters, on ShapesSD renders."""

import numpy as np
import pytest
import torch
from PIL import Image

from concept_edit.evaluation.classifiers import AttributeReader, ClipZeroShotClassifier, make_classifier
from concept_edit.evaluation.suites import Entry, Suite
from concept_edit.worlds.shapes.judge import OracleAttributeClassifier, ShapesOracleJudge


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


def shapes_renders():
    """ShapesSD renders of several scenes, empty backgrounds and two-scene blends (which the oracle may read
    as "none"), as (N, 32, 32, 3) uint8."""
    from concept_edit.worlds.shapes.world import OBJECTS, STYLES, Scene, _background, render

    colours = ("red", "blue", "green", "yellow", "white")
    scenes = [render(Scene(OBJECTS[i % 8], colours[i % 5], STYLES[i % 6], i)) for i in range(40)]
    empty = [_background(style, np.random.default_rng(k)).astype(np.uint8) for k, style in enumerate(STYLES)]
    blends = [((scenes[k].astype(np.float32) + scenes[k + 7]) / 2).astype(np.uint8) for k in range(0, 30, 3)]
    return np.stack(scenes + empty + blends)


# ---------------------------------------------------------------- CLIP zero-shot


class ColourClip(torch.nn.Module):
    """A CLIP stand-in with embeddings known by construction: a red image and a text holding "red" embed to
    e0, a blue image and a text holding "blue" to e1."""

    def __init__(self, tokenizer):
        super().__init__()
        self.ids = {w: tokenizer.convert_tokens_to_ids(w + "</w>") for w in ("red", "blue")}

    def get_image_features(self, pixel_values):
        red = pixel_values[:, 0].mean((1, 2)) > pixel_values[:, 2].mean((1, 2))
        return torch.stack([red.float(), (~red).float()], 1)

    def get_text_features(self, input_ids, attention_mask):
        return torch.tensor([[float(self.ids[w] in ids) for w in ("red", "blue")] for ids in input_ids.tolist()])


def coloured(names):
    rgb = {"red": (255, 0, 0), "blue": (0, 0, 255)}
    return [Image.new("RGB", (32, 32), rgb[name]) for name in names]


def test_clip_zero_shot_returns_each_images_best_attribute(clip_tokenizer_dir):
    """Images whose attribute differs get different answers, each the index of its own attribute: the texts
    and the images reach CLIP in order, and the prompt template is applied to every attribute."""
    _, processor = tiny_clip(clip_tokenizer_dir)
    classifier = ClipZeroShotClassifier(ColourClip(processor.tokenizer), processor)
    images = coloured(["blue", "red", "blue", "red", "red"])
    assert classifier(images, ["red doctor", "blue doctor"]) == [1, 0, 1, 0, 0]
    assert classifier(images, ["blue doctor", "red doctor"]) == [0, 1, 0, 1, 1]
    templated = ClipZeroShotClassifier(ColourClip(processor.tokenizer), processor, prompt="a photo of a {} car")
    assert templated(images[:2], ["blue", "red"]) == [0, 1]


def reads_as_clips_forward_pass(classify, model, processor):
    """The classifier answers, image by image, the argmax of CLIP's own logits over the attributes (what the
    classifier computed before it became an adapter over the CLIP judge), and those answers differ between
    images, so a classifier that answers one index for every image cannot pass."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(im) for im in shapes_renders()[:24]]
    images += [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(8)]
    attributes = ["van", "bird", "male doctor"]  # texts this random tiny CLIP tells apart on these images
    inputs = processor(text=attributes, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**inputs).logits_per_image.argmax(-1).tolist()
    assert len(set(expected)) > 1, "the tiny CLIP tells none of these images apart: the check would prove nothing"
    assert classify(images, attributes) == expected


def test_clip_zero_shot_runs_a_real_tiny_clip(clip_tokenizer_dir):
    model, processor = tiny_clip(clip_tokenizer_dir)
    reads_as_clips_forward_pass(ClipZeroShotClassifier(model, processor), model, processor)


def test_the_tiny_clip_check_fails_for_a_constant_classifier(clip_tokenizer_dir, monkeypatch):
    """The check above can fail: a classifier answering one index for every image does not pass it."""
    model, processor = tiny_clip(clip_tokenizer_dir)
    classifier = ClipZeroShotClassifier(model, processor)
    for constant in range(3):
        monkeypatch.setattr(AttributeReader, "read", lambda self, images, k=constant: [k] * len(images))
        with pytest.raises(AssertionError):
            reads_as_clips_forward_pass(classifier, model, processor)


# ---------------------------------------------------------------- the shapes oracle


def test_oracle_classifier_chooses_among_the_given_attributes():
    from concept_edit.worlds.shapes.world import Scene, render

    images = [render(Scene("heart", c, "plain", i)) for i, c in enumerate(["red", "blue", "green"])]
    classify = OracleAttributeClassifier()
    assert classify(images, ["red", "blue", "green"]) == [0, 1, 2]
    assert classify(images[:2], ["a blue heart", "a red heart"]) == [1, 0]


def test_oracle_classifier_answers_minus_one_for_an_image_without_an_object():
    from concept_edit.worlds.shapes.world import Scene, _background, render

    empty = _background("plain", np.random.default_rng(3)).astype(np.uint8)
    images = [render(Scene("heart", "red", "plain", 0)), empty]
    assert OracleAttributeClassifier()(images, ["red", "blue"]) == [0, -1]


def oracle_as_before(oracle, images, attributes):
    """What `OracleAttributeClassifier` computed before it became an adapter over the oracle judge: the most
    probable of the attributes' labels, -1 where the oracle's own argmax is "none"."""
    from concept_edit.worlds.shapes.oracle import HEADS, NONE, OUTPUTS

    head, labels = OracleAttributeClassifier.resolve(attributes)
    probs = oracle.read(list(images)).probs[head]
    chosen = probs[:, [HEADS[head].index(label) for label in labels]].argmax(1)
    chosen[probs.argmax(1) == OUTPUTS[head].index(NONE)] = -1
    return chosen.tolist()


def test_oracle_classifier_answers_as_before_on_shapes_renders():
    images = shapes_renders()
    classify = OracleAttributeClassifier()
    seen = set()
    for attributes in (
        ["red", "blue"],
        ["red", "blue", "green", "yellow"],
        ["a red heart", "a white heart", "a blue heart"],
        ["circle", "ring", "star"],
        ["plain", "striped", "dotted", "noisy"],
    ):
        before = oracle_as_before(classify.oracle, images, attributes)
        assert classify(images, attributes) == before
        assert classify([Image.fromarray(im) for im in images], attributes) == before  # as the debias loop passes them
        seen.update(before)
    assert -1 in seen and len(seen - {-1}) >= 3  # the renders exercise "none" and several answers


def test_oracle_judge_answers_over_a_suites_subset_of_labels():
    """With `suite.answers[head]` the oracle judge answers the most probable of those labels (or "none");
    without it, every label it knows. Unknown candidates, and candidates for the logo head, are refused."""
    from concept_edit.worlds.shapes.world import Scene, _background, render

    judge = ShapesOracleJudge()
    images = np.stack(
        [render(Scene("heart", "green", "plain", 0)), _background("plain", np.random.default_rng(3)).astype(np.uint8)]
    )

    def suite(**kwargs):
        return Suite("t", 1, "t", tuple(Entry("a heart", "red", k, "color") for k in range(2)), **kwargs)

    assert judge.read(images, suite()).labels == ["green", "none"]
    probs = judge.oracle.read(images).probs["color"]
    from concept_edit.worlds.shapes.oracle import OUTPUTS

    more_probable = max(("red", "blue"), key=lambda c: probs[0, OUTPUTS["color"].index(c)])
    restricted = suite(answers={"color": ("red", "blue")})
    judge.check(restricted)
    assert judge.read(images, restricted).labels == [more_probable, "none"]
    with pytest.raises(ValueError, match=r"\['mauve'\] are not color labels"):
        judge.check(suite(answers={"color": ("red", "mauve")}))
    with pytest.raises(ValueError, match="label 'red'"):  # the entries' label must be one of the candidates
        judge.check(suite(answers={"color": ("green", "blue")}))
    logo = Suite("t", 1, "t", (Entry("a logo", "logo", 0, "logo"),), answers={"logo": ("logo",)})
    with pytest.raises(ValueError, match="takes no candidates"):
        judge.check(logo)


# ---------------------------------------------------------------- the adapter


class RecordingJudge:
    """A judge of the one interface that answers a script and records the suites it was asked."""

    name = "recording"

    def __init__(self, answers):
        self.answers, self.suites = answers, []

    def check(self, suite):
        self.suites.append(suite)
        if suite.entries[0].head != "gender":
            raise ValueError("asks gender only")

    def read(self, images, suite):
        from concept_edit.evaluation.judges import Reading

        self.suites.append(suite)
        return Reading(labels=list(self.answers[: len(images)]))


def test_attribute_reader_asks_one_question_and_maps_answers_to_indices():
    judge = RecordingJudge(["f", "none", "m", "x", "f"])
    reader = AttributeReader(judge, "gender", {"m": "a man", "f": "a woman"})
    assert reader.read(np.zeros((5, 8, 8, 3), np.uint8)) == [1, -1, 0, -1, 1]  # NONE or any other answer: -1
    checked, asked = judge.suites
    assert checked.answers == asked.answers == {"gender": {"m": "a man", "f": "a woman"}}
    assert len(asked.entries) == 5 and {e.head for e in asked.entries} == {"gender"}
    assert reader.read([]) == []
    with pytest.raises(ValueError, match="asks gender only"):  # the judge's own check, before any image
        AttributeReader(judge, "colour", ("red", "blue"))
    with pytest.raises(ValueError, match="the shapes oracle reads the heads"):
        AttributeReader(ShapesOracleJudge(), "gender", ("male", "female"))


def test_make_classifier_defaults_and_errors(sd):
    with pytest.raises(ValueError, match="unknown classifier"):
        make_classifier("resnet", sd)
    with pytest.raises(ValueError, match="cannot load the CLIP classifier"):
        make_classifier(None, sd)  # not a shapes model -> CLIP, which is not cached offline
