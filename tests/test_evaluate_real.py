"""The one evaluation path on a model that is not the shapes world: a judge of the suite's choosing, a
metric-only suite, real reference images, per-prompt guidance, and the protocol the report compares."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from concept_edit.evaluation.evaluate import evaluate
from concept_edit.evaluation.judges import Reading
from concept_edit.evaluation.report import build_report, load_results
from concept_edit.evaluation.suites import Entry, Suite
from concept_edit.io import write_json


class BrightnessJudge:
    """Answers "bright" or "dark" from the mean pixel: a judge whose answers a test can predict."""

    name = "brightness"

    def protocol(self) -> dict:
        return {"judge": self.name, "threshold": 127}

    def check(self, suite) -> None:
        if any(e.head != "brightness" for e in suite.entries):
            raise ValueError("the brightness judge answers the 'brightness' head only")

    def read(self, images, suite) -> Reading:
        return Reading(labels=["bright" if im.mean() > 127 else "dark" for im in images])

    def summary(self, reading, suite) -> dict:
        return {"bright_images": sum(label == "bright" for label in reading.labels)}


def _suite(head="brightness", judge="none", **kw) -> Suite:
    entries = (Entry("a cat", "bright", 0, head), Entry("a dog", "dark", 1, head), Entry("a cat", "bright", 2, head))
    return Suite("toy", 1, "toy suite", entries, judge=judge, reference=None, features=None, **kw)


def test_a_judge_the_suite_names_reads_every_image(sd):
    results, images = evaluate(sd, _suite(), judge=BrightnessJudge(), progress=False)
    expected = ["bright" if im.mean() > 127 else "dark" for im in images]
    correct = sum(e == label for e, label in zip(expected, ["bright", "dark", "bright"], strict=True))
    per = results["per_concept"]
    assert per["bright"]["n"] == 2 and per["dark"]["n"] == 1
    assert per["bright"]["accuracy"] * 2 + per["dark"]["accuracy"] == correct
    assert results["judge_summary"] == {"bright_images": expected.count("bright")}
    assert results["protocol"]["judge"] == {"judge": "brightness", "threshold": 127}


def test_a_metric_only_suite_has_no_accuracy_but_its_counts(sd):
    results, _ = evaluate(sd, _suite(head=""), progress=False)
    assert results["mean_accuracy"] is None
    assert results["per_concept"] == {"bright": {"n": 2}, "dark": {"n": 1}}
    assert "none_share" not in results and "frechet_to_renders" not in results


def test_the_shapes_oracle_and_true_renders_are_refused_for_another_model(sd):
    with pytest.raises(ValueError, match="shapes-oracle, which reads another world's images"):
        evaluate(sd, _suite(judge="shapes-oracle"), progress=False)
    with pytest.raises(ValueError, match="shapes-oracle, which reads another world's images"):  # named as an option
        evaluate(sd, _suite(), judge="shapes-oracle", progress=False)
    with pytest.raises(ValueError, match="true renders exist only for a world that can draw its prompts"):
        evaluate(sd, _suite(), reference="renders", progress=False)


def test_a_judge_that_cannot_answer_is_refused_before_generating(sd, monkeypatch):
    import concept_edit.generation as generation

    monkeypatch.setattr(generation, "_draw", lambda *a, **k: pytest.fail("generated before checking the judge"))
    with pytest.raises(ValueError, match="answers the 'brightness' head only"):
        evaluate(sd, _suite(head="object"), judge=BrightnessJudge(), progress=False)


def test_per_prompt_guidance_is_used(sd, monkeypatch):
    import importlib

    module = importlib.import_module("concept_edit.evaluation.evaluate")
    seen = []
    real = module.generate

    def spy(pipe, prompts, seeds, *, guidance, **kw):
        seen.append((tuple(seeds), guidance))
        return real(pipe, prompts, seeds, guidance=guidance, **kw)

    monkeypatch.setattr(module, "generate", spy)
    suite = _suite()
    entries = [dataclasses.replace(e, guidance=g) for e, g in zip(suite.entries, (3.0, None, 3.0), strict=True)]
    own = dataclasses.replace(suite, entries=tuple(entries), protocol={"guidance": 5.0})
    results, _ = evaluate(sd, own, progress=False)
    assert sorted(seen) == [((0, 2), 3.0), ((1,), 5.0)]  # entries without their own take the suite's
    assert results["protocol"]["per_prompt_guidance"] == [3.0]
    seen.clear()
    results, _ = evaluate(sd, own, guidance=2.0, progress=False)
    assert seen == [((0, 1, 2), 2.0)]  # the user's --guidance replaces every entry's own
    assert results["protocol"]["per_prompt_guidance"] is None and results["guidance"] == 2.0


def test_a_reference_folder_is_read_before_drawing_and_bad_images_are_refused(shapes, tmp_path, monkeypatch):
    """Issue 29's bad input: unreadable or mixed-size reference images are one error before any drawing; a
    folder of one size is read in chunks into the same Frechet distance as the whole batch."""
    import importlib

    from concept_edit.evaluation import metrics
    from concept_edit.evaluation.features import make_features
    from concept_edit.evaluation.suites import get_suite
    from concept_edit.worlds.shapes.world import Scene, render

    folder = tmp_path / "real"
    folder.mkdir()
    truths = [render(Scene(obj, "red", "plain", i)) for i, obj in enumerate(("circle", "star", "heart", "square"))]
    for i, image in enumerate(truths):
        Image.fromarray(image).save(folder / f"{i}.png")
    suite = get_suite("shapes-objects", n=1)
    results, images = evaluate(shapes, suite, reference=f"folder:{folder}", chunk_size=3, progress=False)
    assert results["reference_images"] == {"folder": str(folder), "read": 4, "size": [32, 32], "resized": False}
    oracle = make_features("shapes-oracle")
    whole = metrics.frechet_distance(oracle(images), oracle(np.stack(truths)))
    # read in chunks of 3 (of 4 references, of 8 drawn): the oracle's float32 features of a batch of 3 differ from
    # those of the whole batch in the 7th digit, which is all the distance may differ by (the statistics themselves
    # are exact: test_metrics)
    assert results["frechet_to_real"] == pytest.approx(whole, rel=1e-6)
    assert "frechet_to_renders" not in results

    def no_drawing(*args, **kwargs):
        raise AssertionError("drew before the reference folder was checked")

    monkeypatch.setattr(importlib.import_module("concept_edit.evaluation.evaluate"), "_generate", no_drawing)
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="1 of 5 files are not readable images .broken.png."):
        evaluate(shapes, suite, reference=f"folder:{folder}", progress=False)
    (folder / "broken.png").unlink()
    Image.fromarray(truths[0]).resize((48, 48)).save(folder / "big.png")
    with pytest.raises(ValueError, match="mixes image sizes .32x32, 48x48.; give --reference-resize"):
        evaluate(shapes, suite, reference=f"folder:{folder}", progress=False)
    full = (folder / "big.png").read_bytes()
    (folder / "big.png").write_bytes(full[: len(full) // 2])  # a header that reads, pixels that do not
    with pytest.raises(ValueError, match="big.png cannot be decoded"):
        evaluate(shapes, suite, reference=f"folder:{folder}", reference_resize=True, progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        evaluate(shapes, suite, reference=f"folder:{tmp_path / 'missing'}", progress=False)


def test_the_report_refuses_two_protocols_of_one_suite_unless_asked(sd, tmp_path):
    first, _ = evaluate(sd, _suite(head=""), steps=1, progress=False)
    second, _ = evaluate(sd, _suite(head=""), steps=2, progress=False)
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, results in zip(paths, (first, second), strict=True):
        write_json(path, results)
    with pytest.raises(ValueError, match="different protocols \\(steps differ\\)"):
        load_results(paths)
    page = build_report(load_results(paths, allow_mixed_protocols=True))
    assert "protocols differ" in page
    same = load_results([paths[0], paths[0]])
    assert len(same) == 1  # not refused as a mismatch; shown once (issue 26: it used to duplicate the columns)


def test_a_suite_that_asks_for_the_clip_score_gets_it_per_concept(sd, monkeypatch):
    import concept_edit.evaluation.judges.clip as clip

    def fake_score(images, prompts, model=None):  # a known answer per prompt
        return np.array([40.0 if p == "a dog" else 10.0 for p in prompts])

    monkeypatch.setattr(clip, "clip_score", fake_score)
    monkeypatch.setattr(clip, "load_clip", lambda **kw: None)  # the weights check before drawing
    results, _ = evaluate(sd, _suite(head="", metrics=("clip_score",)), progress=False)
    assert results["clip_score_per_concept"] == {"bright": 10.0, "dark": 40.0}
    assert results["clip_score"] == 20.0
    assert "CLIP score" in build_report([{**results, "_file": "r.json"}])


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--judge", "oracle-of-delphi", "unknown judge"),
        ("--features", "vgg", "unknown feature extractor"),
        ("--reference", "folder:/no/such/folder", "does not exist"),
        ("--reference", "the moon", "unknown reference"),
    ],
)
def test_evaluate_cli_overrides_are_checked_before_anything_is_drawn(tmp_path, capsys, flag, value, message):
    from concept_edit.cli.app import main

    out = tmp_path / "r.json"
    args = ["evaluate", "--model", "shapes", "--suite", "shapes-objects", "--n", "1", flag, value, "--out", str(out)]
    assert main(args) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_evaluate_with_a_store_draws_each_image_once(sd, tmp_path, monkeypatch):
    import concept_edit.generation as generation

    suite = _suite(head="")
    first, images = evaluate(sd, suite, store=tmp_path / "store", progress=False)
    monkeypatch.setattr(generation, "_draw", lambda *a, **k: pytest.fail("drew an image the store holds"))
    again, stored = evaluate(sd, suite, store=tmp_path / "store", progress=False)
    assert np.array_equal(images, stored)
    assert again["protocol"] == first["protocol"]


def test_a_shipped_real_suite_runs_end_to_end_with_its_own_judge(shapes):
    """nudity-simple with NudeNet (shipped with its detector) on ShapesSD (the tiny random pipeline reads 16
    tokens only): the suite's judge, its summary and protocol reach the results; shapes show nothing exposed."""
    from concept_edit.evaluation.suites import get_suite

    results, _ = evaluate(shapes, get_suite("nudity-simple", n=2), steps=2, progress=False)
    assert results["per_concept"]["nude"]["n"] == 2 and results["per_concept"]["nude"]["accuracy"] == 0.0
    assert results["protocol"]["judge"]["judge"] == "nudenet" and results["protocol"]["steps"] == 2
    assert "judge_summary" in results


def test_image_change_per_group(shapes):
    from concept_edit.evaluation.suites import get_suite

    suite = get_suite("shapes-objects", n=1)
    entries = tuple(
        dataclasses.replace(e, scene={**e.scene, "group": "erased" if e.label == "circle" else "kept"})
        for e in suite.entries
    )
    suite = dataclasses.replace(suite, entries=entries)
    _, images = evaluate(shapes, suite, progress=False)
    baseline = images.copy()
    baseline[[e.label == "circle" for e in entries]] = 0  # only the "erased" group's images differ
    results, _ = evaluate(shapes, suite, baseline_images=baseline, progress=False)
    per_group = results["image_change_per_group"]
    assert set(per_group) == {"erased", "kept"} and per_group["kept"] < 1e-6 < per_group["erased"]
    assert "Image change per group" in build_report([{**results, "_file": "r.json"}])


def test_what_would_fail_after_drawing_fails_before(sd, tmp_path, monkeypatch):
    """The CLIP-score weights, the reference folder's images and the image-change metric are checked first."""
    import concept_edit.evaluation.judges.clip as clip
    import concept_edit.evaluation.metrics as metrics
    import concept_edit.generation as generation

    monkeypatch.setattr(generation, "_draw", lambda *a, **k: pytest.fail("drew before the check"))

    def offline(**kw):
        raise ValueError("cannot load the CLIP-score model: offline")

    monkeypatch.setattr(clip, "load_clip", offline)
    with pytest.raises(ValueError, match="CLIP-score model"):
        evaluate(sd, _suite(head="", metrics=("clip_score",)), progress=False)
    folder = tmp_path / "real"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="1 of 1 files are not readable images"):
        evaluate(sd, _suite(head=""), reference=f"folder:{folder}", progress=False)
    monkeypatch.setattr(metrics, "_lpips", lambda: None)
    edit = _noop_edit(sd)
    with pytest.raises(ValueError, match="needs LPIPS"):
        evaluate(sd, _suite(head=""), edits=[edit], reference="unedited", progress=False)


def _noop_edit(pipe):
    """A real edit of the tiny pipeline (a zero delta on one cross-attention projection)."""
    import torch

    from concept_edit.edit import DenseDelta, Edit

    name = next(n for n, _ in pipe.unet.named_parameters() if n.endswith("attn2.to_k.weight"))
    weight = dict(pipe.unet.named_parameters())[name]
    delta = DenseDelta(f"unet.{name}", torch.zeros_like(weight))
    return Edit.create(pipe, [delta], method="test", config={}, request={}, seed=None)


def test_long_prompts_are_cut_where_the_papers_cut_them_and_refused_elsewhere(sd):
    long = "a photo of a cat sitting on a very long wooden bench in a quiet sunny park " * 2
    suite = _suite(head="")
    entries = (dataclasses.replace(suite.entries[0], prompt=long), *suite.entries[1:])
    with pytest.raises(ValueError, match="this model reads at most"):
        evaluate(sd, dataclasses.replace(suite, entries=entries), progress=False)
    cut = dataclasses.replace(suite, entries=entries, truncate_prompts=True)
    results, _ = evaluate(sd, cut, progress=False)
    assert results["protocol"]["truncated_prompts"] == 1
