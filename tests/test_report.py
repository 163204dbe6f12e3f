"""The HTML report explains itself: a sentence per run, each metric defined once, the edited concept kept apart
from the others, each suite's purpose, the judge's reading printed under the images, a legend clear of the
bars; and a real headless browser draws it (skipped where Chromium is not installed)."""

import base64
import html
import importlib.util
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from concept_edit.evaluation.report import accuracy_figure, build_report, summary_table

OBJECTS = ["circle", "square", "triangle", "star", "heart", "cross", "diamond", "ring"]
PROTOCOL = {"entries": 128, "seeds": [0, 15], "steps": 25, "guidance": 5.0, "resolution": 32,
            "judge": {"judge": "shapes-oracle", "weights": "oracle.safetensors"},
            "features": {"features": "shapes-oracle", "weights": "oracle.safetensors"}}  # fmt: skip


def _png(rgb) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), rgb, np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def results(suite="shapes-objects", edited=False, concepts=OBJECTS, name="r.json") -> dict:
    """A results file as `evaluate --target circle` writes it: circle 16/16 before, 3/16 after an edit of it."""
    per = {c: {"accuracy": 1.0, "n": 16, "ci95": [0.8064, 1.0]} for c in concepts}
    per["diamond"] = {"accuracy": 0.875, "n": 16, "ci95": [0.6398, 0.965]} if "diamond" in per else None
    per = {c: v for c, v in per.items() if v}
    if edited:
        per["circle"] = {"accuracy": 0.1875, "n": 16, "ci95": [0.0659, 0.4301]}
    others = [v["accuracy"] for c, v in per.items() if c != "circle"]
    run = {
        "suite": suite, "model": "shapes", "edits": ["e/edit.safetensors"] if edited else [], "seed": 0,
        "per_concept": per, "mean_accuracy": float(np.mean([v["accuracy"] for v in per.values()])),
        "target": "circle", "target_accuracy": per["circle"]["accuracy"], "others_accuracy": float(np.mean(others)),
        "none_share": 0.0, "frechet_to_renders": 13.6 if edited else 12.4,
        "edit_names": ["uce(circle)"] if edited else [],
        "protocol": {**PROTOCOL, "suite": suite}, "_file": name,
        "samples": {"circle": [{"prompt": "a circle", "seed": 0, "predicted": "square" if edited else "circle",
                                "png": _png((30, 60, 200))}]},
    }  # fmt: skip
    if edited:
        run["image_change"] = {"metric": "oracle-feature-cosine-distance", "mean": 0.021}
        run["frechet_to_unedited"] = 2.9
    return run


def demo_runs() -> list[dict]:
    paraphrase = ["circle", "square", "triangle", "cross", "diamond", "ring"]
    return [
        results(name="before.json"),
        results(edited=True, name="after.json"),
        results("shapes-paraphrase", concepts=paraphrase, name="before_paraphrase.json"),
        results("shapes-paraphrase", edited=True, concepts=paraphrase, name="after_paraphrase.json"),
    ]


def test_each_run_opens_with_a_sentence_saying_what_changed_with_its_interval():
    page = build_report(demo_runs())
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    assert (
        "UCE's edit of 'circle' in ShapesSD: the judge saw circle in 16/16 images (1.00, 95% CI [0.81, 1.00]) "
        "before the edit and 3/16 images (0.19, 95% CI [0.07, 0.43]) after; the other 7 concepts' mean accuracy "
        "went from 0.98 to 0.98" in text
    )
    assert "ShapesSD, unedited: the judge saw circle in 16/16 images" in text
    assert text.count("UCE's edit of 'circle' in ShapesSD:") == 2  # one per suite


def test_a_suite_without_accuracies_is_summarised_by_its_own_figures():
    before = {"suite": "coco", "model": "m", "edits": [], "seed": 0, "per_concept": {"caption": {"n": 10}},
              "mean_accuracy": None, "clip_score": 31.0, "_file": "a.json"}  # fmt: skip
    after = {**before, "edits": ["e"], "edit_names": ["uce(garbage truck)"], "clip_score": 30.2, "_file": "b.json",
             "image_change": {"metric": "lpips", "mean": 0.2}}  # fmt: skip
    bias = {"suite": "shapes-bias", "model": "shapes", "edits": [], "seed": 0, "mean_accuracy": None,
            "per_concept": {"heart": {"n": 4}, "star": {"n": 4}}, "deviation": {"heart": 1.75, "star": 0.5},
            "mean_deviation": 1.125, "_file": "c.json"}  # fmt: skip
    debiased = {**bias, "edits": ["x"], "edit_names": ["uce(a heart)"], "deviation": {"heart": 0.75, "star": 0.5},
                "mean_deviation": 0.625, "_file": "d.json"}  # fmt: skip
    text = html.unescape(re.sub(r"<[^>]+>", "", build_report([before, after, bias, debiased])))
    assert "UCE's edit of 'garbage truck' in m: CLIP score 31.00 before, 30.20 after; image change against" in text
    assert "UCE's edit of 'a heart' in ShapesSD: heart's deviation 1.75 before, 0.75 after" in text
    assert "target accuracy" not in text.split("What it tests")[1].split("mean LPIPS")[0]  # no column of dashes
    assert "mean LPIPS distance between each edited image" in text


def test_the_target_is_kept_apart_from_the_others_mean():
    page = build_report(demo_runs()[:2])
    assert "<th>mean accuracy</th>" not in page and "0.883" not in page  # the mean that mixes circle in
    assert "others&#x27; mean accuracy" in page and "target accuracy<br>circle" in page
    assert "circle <b>(target)</b>" in page
    lines = summary_table(demo_runs()[:2]).splitlines()
    assert not any(line.startswith("mean accuracy") for line in lines)
    assert any(line.startswith("target accuracy (circle)") for line in lines)
    assert any(line.startswith("others' mean accuracy") for line in lines)


def test_every_metric_is_defined_once_where_it_first_appears():
    page = build_report(demo_runs())
    for name in ("accuracy", "target accuracy", "others&#x27; mean accuracy", "Frechet to renders", "image change",
                 "Frechet to unedited", "read as none"):  # fmt: skip
        assert page.count(f"<dt>{name}</dt>") == 1, name
    first_suite, second_suite = page.split("<h2>Suite shapes-paraphrase</h2>")
    assert "<dt>Frechet to renders</dt>" in first_suite and "<dt>" not in second_suite.split("<h3>")[0]
    assert "cosine distance between the shapes oracle&#x27;s features" in page


def test_each_suite_says_what_it_tests():
    page = build_report(demo_runs())
    objects = page.split("<h2>Suite shapes-objects</h2>")[1].split("<ul")[0]
    paraphrase = page.split("<h2>Suite shapes-paraphrase</h2>")[1].split("<ul")[0]
    assert "What it tests: whether each of the 8 objects is still drawn" in objects
    assert "wordings it was NOT given" in paraphrase


def test_the_judges_reading_is_printed_under_the_image_and_named_once():
    page = build_report(demo_runs()[:2])
    assert "<div class='read'>judge: square</div>" in page  # visible text, not only a hover title
    assert "judge: judge" not in page
    assert "judge: shapes-oracle (weights oracle.safetensors)" in page


def test_the_legend_is_clear_of_the_bars():
    group = demo_runs()[:2]
    fig = accuracy_figure(group, ["circle"])
    fig.canvas.draw()
    ax = fig.axes[0]
    legend, axes = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.y0 >= axes.y1 - 1  # above the axes: no corner of it covers a bar


def _screenshot_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "report_screenshot.py"
    spec = importlib.util.spec_from_file_location("report_screenshot_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_headless_browser_draws_the_report(tmp_path):
    shot = _screenshot_module()
    if shot.find_chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    import json

    paths = []
    for run in demo_runs()[:2]:
        paths.append(tmp_path / run["_file"])
        paths[-1].write_text(json.dumps({k: v for k, v in run.items() if k != "_file"}))
    png = tmp_path / "shot.png"
    assert shot.main([*map(str, paths), "--out", str(png), "--height", "2000"]) == 0
    image = Image.open(png)
    assert image.width == 1280 and 300 < image.height <= 2000
    assert not shot.blank(png)
    pixels = np.asarray(image.convert("RGB")).astype(int)
    red = (pixels[..., 0] > 150) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert red.sum() > 100  # the red outline and the judge's reading under the erased circle are drawn
    assert shot.main([*map(str, paths), "--out", str(tmp_path / "cut.png"), "--height", "300"]) == 1  # cut: said
