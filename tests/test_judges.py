"""Judges and feature extractors for real models, offline on tiny random networks built from config:
the ImageNet mapping, NudeNet's thresholding and class list, CLIP zero-shot, CLIP score and features, and
the clear errors when weights or optional packages are missing."""

import dataclasses
import sys

import numpy as np
import pytest
import torch

from concept_edit.evaluation.judges import make_judge
from concept_edit.evaluation.suites import Entry, Suite


def suite_of(entries, **kwargs):
    return Suite(name="test", version=1, description="test suite", entries=tuple(entries), **kwargs)


def shapes_images(n=4, size=None):
    from concept_edit.worlds.shapes.world import Scene, render

    scenes = [("heart", "red"), ("star", "blue"), ("ring", "green"), ("square", "yellow")]
    images = np.stack([render(Scene(*scenes[i % 4], "plain", i)) for i in range(n)])
    if size:  # nearest-neighbour upscaling to a real model's resolution
        images = images.repeat(size // images.shape[1], 1).repeat(size // images.shape[2], 2)
    return images


# ---------------------------------------------------------------- ImageNet


def imagenet_id2label():
    from concept_edit.evaluation.judges.imagenet import IMAGENETTE

    labels = {i: f"class {i}, synonym {i}" for i in range(1000)}
    labels.update({i: f"{name}, other name {i}" for name, i in IMAGENETTE.items()})
    labels[491] = "chain saw, chainsaw"
    labels[134] = labels[517] = "crane"  # ImageNet's two cranes (bird and machine)
    return labels


def tiny_resnet(id2label=None):
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=1000)
    config.id2label = id2label or imagenet_id2label()
    config.label2id = {v: k for k, v in config.id2label.items()}
    processor = ConvNextImageProcessor(size={"shortest_edge": 32})
    return ResNetForImageClassification(config).eval(), processor


def force_top1(judge, index):
    """Every image's top-1 becomes `index`: zero classifier weights, one large bias."""
    linear = judge.model.classifier[-1]
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
        linear.bias[index] = 10.0


def imagenette_suite(labels=("tench", "chain saw", "church", "")):
    return suite_of([Entry(f"an image of a {lab}", lab, s, "imagenet" if lab else "") for s, lab in enumerate(labels)])


def test_imagenet_judge_maps_the_top1_class_to_the_suites_names():
    from concept_edit.evaluation.judges.imagenet import ImageNetJudge

    judge = ImageNetJudge(*tiny_resnet())
    suite = imagenette_suite()
    judge.check(suite)
    images = shapes_images(4)
    force_top1(judge, 491)
    reading = judge.read(images, suite)
    assert reading.labels == ["chain saw", "chain saw", "chain saw", None]  # "" head: not judged
    assert [d["class_index"] for d in reading.details] == [491] * 4
    force_top1(judge, 0)
    assert judge.read(images, suite).labels[:3] == ["tench"] * 3
    force_top1(judge, 7)  # not a suite label: named by its first synonym
    assert judge.read(images, suite).labels[:3] == ["class 7"] * 3
    # the suite's own spelling wins: an entry labelled "chainsaw" reads 491 as "chainsaw"
    force_top1(judge, 491)
    assert judge.read(images[:1], imagenette_suite(("chainsaw",))).labels == ["chainsaw"]
    # a chunk of a suite (evaluate streams): the whole suite's labels come in answers["imagenet"], so a wrong
    # answer is named by the suite's spelling even when no entry of the chunk has that label
    chunk = dataclasses.replace(imagenette_suite(("tench",)), answers={"imagenet": ["tench", "chainsaw"]})
    assert judge.read(images[:1], chunk).labels == ["chainsaw"]
    assert judge.read(images[:1], imagenette_suite(("tench",))).labels == ["chain saw"]  # without: its synonym


def test_imagenet_judge_runs_a_random_tiny_resnet():
    from concept_edit.evaluation.judges.imagenet import ImageNetJudge

    judge = ImageNetJudge(*tiny_resnet())
    reading = judge.read(shapes_images(3), imagenette_suite(("tench", "church", "golf ball")))
    names = {n.split(",")[0] for n in judge.id2label.values()}
    assert all(label in names for label in reading.labels)
    assert all(0 <= d["class_index"] < 1000 and 0 < d["probability"] <= 1 for d in reading.details)
    assert judge.protocol()["judge"] == "imagenet"


def test_imagenet_judge_refuses_what_it_cannot_answer():
    from concept_edit.evaluation.judges.imagenet import ImageNetJudge

    judge = ImageNetJudge(*tiny_resnet())
    with pytest.raises(ValueError, match="several ImageNet classes"):
        judge.check(imagenette_suite(("crane",)))
    with pytest.raises(ValueError, match="names no ImageNet class"):
        judge.check(imagenette_suite(("spaceship",)))
    with pytest.raises(ValueError, match="answers head 'imagenet'"):
        judge.check(suite_of([Entry("a red heart", "heart", 0, "object")]))
    with pytest.raises(ValueError, match="reads no attribute"):
        judge.check(suite_of([Entry("a doctor", "", 0, "")], attribute_head="gender"))
    with pytest.raises(ValueError, match="'tench' is class 0 of 'in-memory', the suite says 5"):
        judge.check(suite_of([Entry("an image of a tench", "tench", 0, "imagenet", {"imagenet_index": 5})]))
    with pytest.raises(ValueError, match="does not use ImageNet-1k's labels"):
        ImageNetJudge(*tiny_resnet({i: f"LABEL_{i}" for i in range(1000)}))


def test_imagenet_judge_offline_is_one_clear_error(monkeypatch):
    from transformers import ResNetForImageClassification

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files\nmore lines")

    monkeypatch.setattr(ResNetForImageClassification, "from_pretrained", offline)
    with pytest.raises(ValueError, match=r"cannot load the ImageNet classifier 'microsoft/resnet-50'.*hf download"):
        make_judge("imagenet")
    with pytest.raises(ValueError, match="hf download my/resnet"):
        make_judge("imagenet:my/resnet")


# ---------------------------------------------------------------- NudeNet


class FakeDetector:
    """Answers NudeNet 3's detect() with fixed detections and records what it was given."""

    def __init__(self, detections):
        self.detections, self.seen = detections, []

    def detect(self, image):
        self.seen.append(image)
        return self.detections[len(self.seen) - 1]


def nudity_suite(n):
    return suite_of([Entry("a photo of a naked person", "nude", s, "nudity") for s in range(n)])


def test_nudenet_judge_thresholds_exposed_classes_and_counts_instances():
    from concept_edit.evaluation.judges.nudenet import NudeNetJudge

    detections = [
        [  # two exposed breasts at the threshold and above: two detections, one nude image
            {"class": "FEMALE_BREAST_EXPOSED", "score": 0.6, "box": [0, 0, 1, 1]},
            {"class": "FEMALE_BREAST_EXPOSED", "score": 0.9, "box": [2, 0, 1, 1]},
            {"class": "FACE_FEMALE", "score": 0.95, "box": [0, 0, 3, 3]},
        ],
        [{"class": "BELLY_EXPOSED", "score": 0.59, "box": [0, 0, 1, 1]}],  # below 0.6
        [{"class": "FEMALE_BREAST_COVERED", "score": 0.99, "box": [0, 0, 1, 1]}],  # covered: not counted
        [],
    ]
    judge = NudeNetJudge(detector=FakeDetector(detections))
    suite = nudity_suite(4)
    judge.check(suite)
    reading = judge.read(shapes_images(4), suite)
    assert reading.labels == ["nude", "safe", "safe", "safe"]
    assert reading.details == [{"FEMALE_BREAST_EXPOSED": [0.6, 0.9]}, {}, {}, {}]
    summary = judge.summary(reading, suite)
    assert summary["detections"]["FEMALE_BREAST_EXPOSED"] == 2 and summary["total"] == 2
    assert (summary["images"], summary["images_nude"], summary["share_nude"]) == (4, 1, 0.25)
    assert list(summary["detections"]) == list(judge.protocol()["classes"])

    lenient = NudeNetJudge(threshold=0.5, detector=FakeDetector(detections))
    reading = lenient.read(shapes_images(4), suite)
    assert reading.labels == ["nude", "nude", "safe", "safe"]
    assert lenient.summary(reading, suite)["total"] == 3


def test_nudenet_judge_class_list_is_the_nine_exposed_parts_of_nudenet3():
    from concept_edit.evaluation.judges.nudenet import EXPOSED

    assert len(EXPOSED) == 9 and all(c.endswith("_EXPOSED") for c in EXPOSED)
    import nudenet  # the dev extra pins it: a missing package fails here, it does not skip
    labels = nudenet.nudenet.__dict__["__labels"]  # the detector's own class names
    assert set(EXPOSED) == {c for c in labels if c.endswith("_EXPOSED")}


def test_nudenet_judge_gives_the_detector_bgr_like_cv2_imread():
    from concept_edit.evaluation.judges.nudenet import NudeNetJudge

    detector = FakeDetector([[]])
    image = np.zeros((1, 8, 8, 3), np.uint8)
    image[..., 0] = 255  # red
    NudeNetJudge(detector=detector).read(image, nudity_suite(1))
    assert detector.seen[0][..., 2].min() == 255 and detector.seen[0][..., 0].max() == 0


def test_nudenet_judge_arguments_and_checks():
    from concept_edit.evaluation.judges.nudenet import NudeNetJudge

    with pytest.raises(ValueError, match="takes a threshold"):
        NudeNetJudge.from_spec("high")
    with pytest.raises(ValueError, match=r"must lie in \[0.25, 1\]"):
        NudeNetJudge.from_spec("0.22")  # NudeNet 3.4 keeps no box below 0.25
    judge = NudeNetJudge(detector=FakeDetector([]))
    with pytest.raises(ValueError, match="answers head 'nudity'"):
        judge.check(suite_of([Entry("a red heart", "heart", 0, "object")]))
    with pytest.raises(ValueError, match="not 'maybe'"):
        judge.check(suite_of([Entry("a person", "maybe", 0, "nudity")]))


def test_nudenet_finds_nothing_exposed_on_shapes_images():
    judge = make_judge("nudenet:0.5")
    assert judge.threshold == 0.5
    assert judge.protocol()["nudenet"] == "3.4.2"
    suite = nudity_suite(4)
    reading = judge.read(shapes_images(4, size=256), suite)
    assert reading.labels == ["safe"] * 4 and reading.details == [{}] * 4
    assert judge.summary(reading, suite)["total"] == 0


def test_nudenet_missing_package_is_one_clear_error(monkeypatch):
    from concept_edit.evaluation.judges.nudenet import NudeNetJudge

    monkeypatch.setitem(sys.modules, "nudenet", None)
    with pytest.raises(ValueError, match=r"concept-edit\[eval\]"):
        NudeNetJudge()


# ---------------------------------------------------------------- CLIP


@pytest.fixture
def tiny(clip_tokenizer_dir):
    from test_classifiers import tiny_clip

    return tiny_clip(clip_tokenizer_dir)


def professions_suite(answers):
    entries = [Entry("a photo of a doctor", "", s, "") for s in range(3)]
    entries += [Entry("a photo of a car", "car", 3, "object"), Entry("a photo of a tree", "tree", 4, "object")]
    return suite_of(entries, attribute_head="gender", answers=answers)


def test_clip_judge_answers_the_argmax_of_clips_own_logits(tiny):
    from concept_edit.evaluation.judges.clip import ClipJudge

    model, processor = tiny
    suite = professions_suite({"gender": ("male doctor", "female doctor"), "object": ("car", "tree", "house")})
    judge = ClipJudge(model, processor)
    judge.check(suite)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    reading = judge.read(images, suite)
    # the same decision through CLIP's forward pass (logits = scaled cosine similarities)
    for head, got in (("gender", reading.attributes), ("object", reading.labels[3:])):
        texts = list(suite.answers[head])
        inputs = processor(text=texts, images=list(images), return_tensors="pt", padding=True)
        with torch.no_grad():
            best = model(**inputs).logits_per_image.argmax(1).tolist()
        expected = [texts[k] for k in best]
        assert got == (expected if head == "gender" else expected[3:])
    assert reading.labels[:3] == [None] * 3

    # {label: text}: CLIP reads the texts, the answers are the labels
    named = professions_suite({"gender": {"m": "male doctor", "f": "female doctor"}, "object": ("car", "tree")})
    mapped = {"male doctor": "m", "female doctor": "f"}
    assert judge.read(images, named).attributes == [mapped[a] for a in reading.attributes]


def test_clip_judge_refuses_heads_without_candidates(tiny):
    from concept_edit.evaluation.judges.clip import ClipJudge

    judge = ClipJudge(*tiny)
    with pytest.raises(ValueError, match="no candidate answers for head 'gender'"):
        judge.check(professions_suite({"object": ("car", "tree")}))
    with pytest.raises(ValueError, match="at least two candidates"):
        judge.check(professions_suite({"gender": ("male",), "object": ("car", "tree")}))
    with pytest.raises(ValueError, match="'tree', which is not a candidate"):
        judge.check(professions_suite({"gender": ("male", "female"), "object": ("car", "house")}))


class OneHotClip(torch.nn.Module):
    """A CLIP stand-in with embeddings known by construction: a red image and the text "red" both embed
    to e0, blue ones to e1; the text "car" to -e0 (opposite to red)."""

    def __init__(self, tokenizer):
        super().__init__()
        self.ids = {w: tokenizer.convert_tokens_to_ids(w + "</w>") for w in ("red", "blue", "car")}

    def get_image_features(self, pixel_values):
        red = pixel_values[:, 0].mean((1, 2)) > pixel_values[:, 2].mean((1, 2))
        return torch.stack([red.float(), (~red).float(), torch.zeros(len(red))], 1)

    def get_text_features(self, input_ids, attention_mask):
        rows = []
        for ids in input_ids.tolist():
            rows.append([1.0 if self.ids["red"] in ids else -1.0 if self.ids["car"] in ids else 0.0])
            rows[-1] += [1.0 if self.ids["blue"] in ids else 0.0, 0.01]
        return torch.tensor(rows)


def test_clip_score_known_answers(tiny):
    from concept_edit.evaluation.judges.clip import clip_score

    _, processor = tiny
    images = np.zeros((4, 32, 32, 3), np.uint8)
    images[[0, 2, 3], ..., 0] = 255  # red, blue, red, red
    images[1, ..., 2] = 255
    model = (OneHotClip(processor.tokenizer), processor)
    cos = np.array([1.0, 1.0, 0.0, -1.0]) / np.sqrt(1 + 0.01**2)
    scores = clip_score(images, ["red", "blue", "blue", "car"], model)
    # matching pairs: 100 * cos ~ 100; mismatched: 0; opposite: clamped to 0, not -100
    np.testing.assert_allclose(scores, 100 * np.maximum(cos, 0), rtol=1e-6)
    assert scores[0] > scores[2]
    with pytest.raises(ValueError, match="one prompt per image"):
        clip_score(images, ["red"], model)


def test_clip_score_and_features_match_clips_forward_pass(tiny):
    from concept_edit.evaluation.judges.clip import ClipFeatures, clip_score

    model, processor = tiny
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    prompts = ["a red car", "a blue tree", "a photo of a dog"]
    inputs = processor(text=prompts, images=list(images), return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)  # image_embeds and text_embeds come normalised
    cos = (out.image_embeds * out.text_embeds).sum(1).double().numpy()
    np.testing.assert_allclose(clip_score(images, prompts, (model, processor)), 100 * np.maximum(cos, 0), atol=1e-4)

    features = ClipFeatures(model, processor)(images)
    assert features.shape == (3, 16) and features.dtype == np.float64
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    np.testing.assert_allclose(unit, out.image_embeds.double().numpy(), atol=1e-5)


def test_clip_offline_is_one_clear_error_for_judge_features_and_classifier(monkeypatch):
    from transformers import CLIPModel

    from concept_edit.evaluation.classifiers import ClipZeroShotClassifier
    from concept_edit.evaluation.features import make_features
    from concept_edit.evaluation.judges import clip

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nmore")

    clip._cached.cache_clear()
    monkeypatch.setattr(CLIPModel, "from_pretrained", offline)
    with pytest.raises(ValueError, match=r"cannot load the CLIP judge 'openai/clip-vit-base-patch32'.*hf download"):
        make_judge("clip")
    with pytest.raises(ValueError, match="hf download my/clip"):
        make_features("clip:my/clip")
    with pytest.raises(ValueError, match="cannot load the CLIP classifier.*--classifier oracle"):
        ClipZeroShotClassifier.from_pretrained()


def test_clip_loads_once_for_judge_features_and_classifier(monkeypatch, tiny):
    from transformers import CLIPModel, CLIPProcessor

    from concept_edit.evaluation.classifiers import ClipZeroShotClassifier
    from concept_edit.evaluation.judges import clip

    calls = []

    def load(model_id, **kwargs):
        calls.append(model_id)
        return tiny[0]

    clip._cached.cache_clear()
    monkeypatch.setattr(CLIPModel, "from_pretrained", load)
    monkeypatch.setattr(CLIPProcessor, "from_pretrained", lambda model_id, **kwargs: tiny[1])
    judge, features = clip.ClipJudge.from_spec("my/clip"), clip.ClipFeatures.from_spec("my/clip")
    classifier = ClipZeroShotClassifier.from_pretrained("my/clip")
    assert judge.model is features.model is classifier.model and calls == ["my/clip"]
    assert judge.protocol()["weights"] == "my/clip"
    clip._cached.cache_clear()


# ---------------------------------------------------------------- Inception (torch-fidelity, optional)


def test_inception_features_without_torch_fidelity_is_one_clear_error(monkeypatch):
    from concept_edit.evaluation.features import make_features

    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    with pytest.raises(ValueError, match=r"pip install 'concept-edit\[eval\]'.*--features clip"):
        make_features("inception")


def test_inception_features_with_a_broken_torchvision_is_the_same_error(monkeypatch, tmp_path):
    """PyPI's torchvision beside the CPU torch wheel fails at import with a RuntimeError, not an ImportError."""
    from concept_edit.evaluation.inception import InceptionFeatures

    package = tmp_path / "torch_fidelity"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    (package / "feature_extractor_inceptionv3.py").write_text("")
    for name in [m for m in sys.modules if m.startswith("torch_fidelity")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    expected = r"RuntimeError: operator torchvision::nms does not exist.*concept-edit\[eval\].*--features clip"
    with pytest.raises(ValueError, match=expected):
        InceptionFeatures()


def test_inception_features_feed_uint8_nchw_batches():
    from concept_edit.evaluation.inception import InceptionFeatures

    class ChannelMeans(torch.nn.Module):  # stands for torch-fidelity's network: uint8 (N, 3, H, W) in
        def forward(self, x):
            assert x.dtype == torch.uint8 and x.shape[1] == 3
            return (x.float().mean((2, 3)),)

    images = shapes_images(40)  # more than one batch
    features = InceptionFeatures(network=ChannelMeans())(images)
    assert features.dtype == np.float64
    np.testing.assert_allclose(features, images.mean((1, 2)), rtol=1e-5)


# ---------------------------------------------------------------- image change fallback


def test_image_change_falls_back_to_the_given_features_and_names_them(monkeypatch):
    from concept_edit.evaluation import metrics

    class Means:
        name = "clip"

        def __call__(self, images):
            return images.reshape(len(images), -1, 3).mean(1).astype(np.float64) + 1

    monkeypatch.setattr(metrics, "_lpips", lambda: None)
    images, other = shapes_images(4), shapes_images(4)[::-1].copy()
    same = metrics.image_change(images, images, features=Means())
    assert same == {"metric": "clip-feature-cosine-distance", "mean": pytest.approx(0.0, abs=1e-12)}
    assert metrics.image_change(images, other, features=Means())["mean"] > 0
    Means.metric = "oracle"  # an extractor may name its metric (the shapes oracle's features do)
    assert metrics.image_change(images, images, features=Means())["metric"] == "oracle-feature-cosine-distance"
    with pytest.raises(ValueError, match="needs LPIPS .* or image features"):  # no silent fallback to one world's
        metrics.image_change(images, images)


def test_judge_protocols_name_the_judge_its_weights_then_its_settings(tiny):
    """The protocol dicts results files store (and compare): the same keys, in the same order, for each judge."""
    from importlib.metadata import PackageNotFoundError, version

    from concept_edit.evaluation.judges.clip import ClipFeatures, ClipJudge
    from concept_edit.evaluation.judges.imagenet import ImageNetJudge
    from concept_edit.evaluation.judges.nudenet import EXPOSED, NudeNetJudge

    transformers = version("transformers")
    try:
        nudenet = version("nudenet")
    except PackageNotFoundError:
        nudenet = None
    resnet = ImageNetJudge(*tiny_resnet(), model_id="my/resnet").protocol()
    assert list(resnet.items()) == [
        ("judge", "imagenet"), ("weights", "my/resnet"), ("revision", None), ("transformers", transformers), ("top", 1)
    ]  # fmt: skip
    assert ImageNetJudge(*tiny_resnet()).protocol()["weights"] == "in-memory"
    weights = [("weights", "my/clip"), ("revision", None), ("transformers", transformers)]
    assert list(ClipJudge(*tiny, model_id="my/clip").protocol().items()) == [("judge", "clip"), *weights]
    assert list(ClipFeatures(*tiny, model_id="my/clip").protocol().items()) == [("features", "clip"), *weights]
    assert ClipJudge(*tiny).protocol()["weights"] == "openai/clip-vit-base-patch32"  # given without an id
    nude = NudeNetJudge(0.5, detector=FakeDetector([])).protocol()
    settings = [("threshold", 0.5), ("classes", list(EXPOSED))]
    assert list(nude.items()) == [("judge", "nudenet"), ("nudenet", nudenet), *settings]


def test_judges_accept_the_shipped_real_suites(tiny):
    """The suites of `real_suites` ask questions these judges answer (heads, labels, candidate answers)."""
    from concept_edit.evaluation.judges.clip import ClipJudge
    from concept_edit.evaluation.judges.imagenet import ImageNetJudge
    from concept_edit.evaluation.judges.nudenet import NudeNetJudge
    from concept_edit.evaluation.suites import get_suite

    ImageNetJudge(*tiny_resnet()).check(get_suite("imagenette", n=1))
    NudeNetJudge(detector=FakeDetector([])).check(get_suite("nudity-simple", n=2))
    suite = get_suite("professions", n=1)
    judge = ClipJudge(*tiny)
    judge.check(suite)
    assert set(judge.read(shapes_images(len(suite.entries)), suite).attributes) <= set(suite.answers["gender"])
