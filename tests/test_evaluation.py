"""Suites, evaluate, results files, the report and the demo's pieces, on ShapesSD."""

import json

import numpy as np
import pytest

from concept_edit import EditRequest, fit
from concept_edit.cli.app import main
from concept_edit.evaluation import build_report, evaluate, get_suite
from concept_edit.evaluation.evaluate import REQUIRED_KEYS
from concept_edit.evaluation.report import load_results
from concept_edit.worlds.shapes.suites import BUILTIN


@pytest.fixture
def two_image_suite(tmp_path):
    path = tmp_path / "two.txt"
    path.write_text("# head: object\na red circle | circle | 0\na blue star on a dotted background | star | 1\n")
    return path


def test_builtin_suites_are_fixed_and_paired():
    for name in BUILTIN:
        a, b = get_suite(name, n=3, seed=5), get_suite(name, n=3, seed=5)
        assert a == b and a.entries
        assert all(len([e for e in a.entries if e.label == c]) >= 1 for c in a.concepts)
    objects = get_suite("shapes-objects", n=4)
    assert objects.concepts == ["circle", "square", "triangle", "star", "heart", "cross", "diamond", "ring"]
    assert [e.seed for e in objects.entries if e.label == "circle"] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("# head: object\na red circle | circle\n", ":2: expected"),
        ("a red circle | circle | 0\n", "must start with"),
        ("# head: smell\n", "unknown head"),
        ("# head: object\n", "holds no prompts"),
    ],
)
def test_malformed_suite_files(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        get_suite(str(path))


def test_unknown_suite():
    with pytest.raises(ValueError, match="unknown suite"):
        get_suite("shapes-smells")


def test_evaluate_two_image_suite_with_and_without_an_edit(shapes, two_image_suite):
    suite = get_suite(str(two_image_suite))
    before, images = evaluate(shapes, suite, target="circle", progress=False)
    for key in REQUIRED_KEYS + ("target_accuracy", "others_accuracy", "frechet_to_renders", "samples"):
        assert key in before
    assert before["per_concept"]["circle"]["n"] == 1 and before["edits"] == []
    edit = fit(shapes, "uce", EditRequest(concepts=("circle",)))
    after, _ = evaluate(shapes, suite, edits=[edit], target="circle", baseline_images=images, progress=False)
    assert after["edits"] == ["uce(circle)"]
    unchanged, _ = evaluate(shapes, suite, target="circle", baseline_images=images, progress=False)
    assert unchanged["image_change"]["mean"] == pytest.approx(0.0, abs=1e-6)  # same prompts, seeds and weights
    assert after["image_change"]["mean"] > 0.01  # the edit changed what is drawn
    assert after["samples"]["circle"][0]["seed"] == before["samples"]["circle"][0]["seed"]
    json.dumps(after)  # the results are plain JSON


def test_evaluate_runs_as_stages_over_one_spec(shapes, two_image_suite):
    """A spec object and the same options as keywords give the same results; the stages can be run one by one
    (prepare -> draw -> read -> measure) and give them too; options beside a spec are refused."""
    from concept_edit.evaluation.evaluate import EvaluationSpec, draw, prepare
    from concept_edit.evaluation.measure import measure
    from concept_edit.evaluation.tally import Tally

    suite = get_suite(str(two_image_suite))
    spec = EvaluationSpec(suite, target="circle", steps=3, samples_per_concept=1)
    by_spec, images = evaluate(shapes, spec, progress=False)
    by_keywords, again = evaluate(shapes, suite, target="circle", steps=3, samples_per_concept=1, progress=False)
    assert json.dumps(by_spec, sort_keys=True) == json.dumps(by_keywords, sort_keys=True)
    np.testing.assert_array_equal(images, again)
    plan = prepare(shapes, spec)
    assert (plan.steps, plan.judge.name, plan.reference) == (3, "shapes-oracle", "renders")  # the world's judge
    tally = Tally(plan)
    for chunk in draw(shapes, plan, progress=False):
        assert chunk.baseline is None  # no edit: nothing to compare with
        tally.add(chunk, plan.judge.read(chunk.images, chunk.suite))
    staged = measure(shapes, plan, tally)
    assert json.dumps(staged, sort_keys=True) == json.dumps(by_spec, sort_keys=True)
    with pytest.raises(TypeError, match="give options in the EvaluationSpec"):
        evaluate(shapes, spec, target="star")
    with pytest.raises(TypeError, match="unknown option.s. targt; known: .*target"):
        evaluate(shapes, suite, targt="star")


def test_evaluate_in_chunks_gives_the_results_of_one_chunk(shapes):
    """Issue 29: streaming (chunks of 5 of 16 entries, the last one short) keeps the answers, thumbnails, image
    change per concept and Frechet distances of evaluating everything at once; keep_images=False returns none."""
    import dataclasses

    from concept_edit import EditRequest, fit

    suite = get_suite("shapes-objects", n=2, seed=3)
    edit = fit(shapes, "uce", EditRequest(concepts=("circle",)))
    # one image per pipeline call, so both runs draw the same pixels (a batch's size moves CPU convolutions' rounding)
    options = {"edits": [edit], "target": "circle", "steps": 2, "progress": False, "samples_per_concept": 1,
               "batch_size": 1}  # fmt: skip
    whole, images = evaluate(shapes, suite, chunk_size=100, **options)
    chunked, again = evaluate(shapes, suite, chunk_size=5, **options)
    np.testing.assert_array_equal(images, again)
    assert evaluate(shapes, suite, chunk_size=8, keep_images=False, compute_baseline=False, **options)[1] is None
    numbers = ("frechet_to_renders", "frechet_to_unedited")
    for key in numbers:  # the oracle's float32 features of 5 images vs 16 differ in the 7th digit: no more
        assert chunked.pop(key) == pytest.approx(whole.pop(key), rel=1e-5)
    change, change_whole = chunked.pop("image_change_per_concept"), whole.pop("image_change_per_concept")
    assert change == pytest.approx(change_whole, rel=1e-5) and max(change.values()) > 0.01
    assert chunked.pop("image_change")["mean"] == pytest.approx(whole.pop("image_change")["mean"], rel=1e-5)
    assert json.dumps(chunked, sort_keys=True) == json.dumps(whole, sort_keys=True)  # answers, samples, protocol
    with pytest.raises(ValueError, match="chunk_size must be"):
        evaluate(shapes, suite, chunk_size=0, progress=False)
    with pytest.raises(ValueError, match="lpips_size must be"):  # LPIPS' AlexNet cannot read below 31 px
        evaluate(shapes, suite, lpips_size=16, progress=False)
    assert "lpips_size" not in whole["protocol"]  # only when asked, so earlier results stay comparable
    empty = dataclasses.replace(suite, entries=())
    with pytest.raises(ValueError, match="has no entries"):
        evaluate(shapes, empty, progress=False)
    with pytest.raises(ValueError, match="3 baseline images for 16 suite entries"):
        evaluate(shapes, suite, baseline_images=images[:3], progress=False)


def test_images_without_an_object_are_read_as_none_not_as_some_object(shapes, two_image_suite, monkeypatch):
    import importlib

    import numpy as np
    from PIL import Image

    from concept_edit.worlds.shapes.world import _background

    evaluate_module = importlib.import_module("concept_edit.evaluation.evaluate")  # the module, not the function

    def backgrounds(pipe, prompts, seeds, **kwargs):  # what an erasure into an empty scene would draw
        return [Image.fromarray(_background("dotted", np.random.default_rng(s)).astype(np.uint8)) for s in seeds]

    monkeypatch.setattr(evaluate_module, "generate", backgrounds)
    results, _ = evaluate(shapes, get_suite(str(two_image_suite)), target="circle", progress=False)
    assert results["none_share"] == 1.0 and results["target_accuracy"] == 0.0
    assert results["per_concept"]["star"]["none_share"] == 1.0
    assert results["none_ci95"][0] > 0.15  # two of two: Wilson's lower bound
    assert "read as none" in build_report([{**results, "_file": "r.json"}])


def test_report_shows_probe_runs_and_erasure_table_rows_beside_evaluations(shapes, two_image_suite, tmp_path):
    from concept_edit.evaluation.report import write_report

    results, _ = evaluate(shapes, get_suite(str(two_image_suite)), target="circle", progress=False)
    probe = {
        "kind": "probe",
        "attack": "paraphrase",
        "concept": "circle",
        "model": "shapes",
        "protocol": {"budget": 2, "seed": 0},
        "prompts": [{"prompt": "a disc", "seed": 0, "read": "circle", "success": True}],
        "unedited": {"rate": 1.0, "ci95": [0.3, 1.0]},
        "edited_no_attack": {"rate": 0.0, "ci95": [0.0, 0.7]},
        "attack_success_rate": 0.5,
        "ci95": [0.1, 0.9],
        "n": 2,
    }
    table = {"rows": [{"method": "uce", "concept": "circle", "target_accuracy": 0.1, "attack_success": {}}]}
    paths = []
    for name, data in (("eval.json", results), ("probe.json", probe), ("table.json", table)):
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(data))
    page = write_report(paths, tmp_path / "r.html").read_text()
    assert "Suite two" in page and "<h2>Attacks</h2>" in page and "a disc" in page
    assert "Erasure methods compared" in page and "<td>uce</td>" in page
    (tmp_path / "bad.json").write_text(json.dumps({**probe, "n": 0}))
    with pytest.raises(ValueError, match="'n' must be a positive integer"):
        write_report([tmp_path / "bad.json"], tmp_path / "r2.html")


def test_bias_suite_reports_distribution_and_deviation(shapes):
    results, _ = evaluate(shapes, get_suite("shapes-bias", n=2), progress=False)
    assert set(results["distribution"]) == {"heart", "star", "circle", "square"}
    assert set(results["deviation"]) == set(results["distribution"])
    # ShapesSD's planted bias: an uncoloured heart is red, a star yellow (shapes_quality: 1.00 of 16 each)
    assert results["distribution"]["heart"]["red"] == 1.0 and results["distribution"]["star"]["yellow"] == 1.0
    assert results["deviation"]["heart"] == pytest.approx(1.75)  # all mass on one of 8 colours


def test_a_prompt_file_on_a_model_without_a_judge_of_its_own_needs_one(sd, two_image_suite):
    """A prompt file is judged by the model's world's judge; a real model has none, so --judge is asked for."""
    with pytest.raises(ValueError, match="names no judge .* give --judge"):
        evaluate(sd, get_suite(str(two_image_suite)), progress=False)


def test_cli_evaluate_and_report(two_image_suite, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert (
        main(
            ["evaluate", "--model", "shapes", "--suite", str(two_image_suite), "--target", "circle", "--out", str(out)]
        )
        == 0
    )
    assert "circle" in capsys.readouterr().out
    report = tmp_path / "report.html"
    assert main(["report", str(out), str(out), "--out", str(report)]) == 0
    page = report.read_text()
    # the file given twice is shown once (issue 26): the chart and the two samples
    assert "<table>" in page and page.count("data:image/png;base64,") >= 3 and "circle" in page


def test_report_contains_tables_and_images(shapes, two_image_suite):
    results, _ = evaluate(shapes, get_suite(str(two_image_suite)), target="circle", progress=False)
    results["_file"] = "r.json"
    page = build_report([results])
    assert "Per concept (the judge" in page and "<img class='pix'" in page and "<img class='chart'" in page


def test_bad_evaluation_input_writes_nothing(tmp_path, capsys, two_image_suite):
    out = tmp_path / "r.json"
    assert main(["evaluate", "--model", "shapes", "--suite", "nope", "--out", str(out)]) == 2
    assert (
        main(["evaluate", "--model", "shapes", "--suite", str(two_image_suite), "--target", "heart", "--out", str(out)])
        == 2
    )
    assert main(["evaluate", "--model", "shapes", "--suite", str(two_image_suite), "--out", str(tmp_path)]) == 2
    not_results = tmp_path / "x.json"
    not_results.write_text("{}")
    assert main(["report", str(not_results), "--out", str(tmp_path / "rep.html")]) == 2
    assert not out.exists() and not (tmp_path / "rep.html").exists()
    with pytest.raises(ValueError, match="not a concept-edit results file"):
        load_results([not_results])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["demo", "--out", str(blocker)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_edit_from_another_model_is_refused_by_evaluate(sd, tmp_path, two_image_suite, capsys):
    edit_path = fit(sd, "uce", EditRequest(concepts=("cat",))).save(tmp_path / "e")
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "evaluate",
                "--model",
                "shapes",
                "--edit",
                str(edit_path),
                "--suite",
                str(two_image_suite),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "was made for" in capsys.readouterr().err and not out.exists()


def test_concept_that_tokenizes_to_nothing(shapes, tmp_path, capsys):
    with pytest.raises(ValueError, match="tokenizes to nothing"):
        fit(shapes, "uce", EditRequest(concepts=("\u200b",)))
    assert main(["edit", "uce", "--model", "shapes", "--concept", "\u200b", "--out", str(tmp_path / "e")]) == 2
    assert not (tmp_path / "e").exists()


def test_summary_table_lists_each_concepts_deviation_for_the_bias_suite():
    from concept_edit.evaluation.report import summary_table

    run = {"model": "shapes", "edits": [], "per_concept": {"heart": {"accuracy": 1.0, "n": 4}}}
    before = {**run, "deviation": {"heart": 1.75}, "mean_deviation": 1.75}
    after = {**run, "edits": ["e.safetensors"], "deviation": {"heart": 0.5}, "mean_deviation": 0.5}
    row = next(line for line in summary_table([before, after]).splitlines() if line.startswith("deviation heart"))
    assert row.split()[2:] == ["1.750", "0.500"]
