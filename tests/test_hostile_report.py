"""`report` under hostile input: a results file given twice is shown once (with one line saying so); a file that
is not JSON (an edit's .safetensors, bytes that are not UTF-8, a folder) is refused with one line naming it."""

import json
import logging

import pytest
from test_hostile_input import refused, run
from test_report import demo_runs


@pytest.fixture
def work(tmp_path):
    for data in demo_runs()[:2]:
        (tmp_path / data["_file"]).write_text(json.dumps({k: v for k, v in data.items() if k != "_file"}))
    (tmp_path / "edit.safetensors").write_bytes(b"\x98\x01\x00\x00\x00\x00\x00\x00" + b'{"__metadata__":{}}' * 20)
    return tmp_path


def test_the_same_results_file_twice_is_shown_once_with_one_line(work, capsys, caplog):
    out = work / "r.html"
    with caplog.at_level(logging.WARNING, logger="concept_edit"):
        code, _, err = run(["report", work / "before.json", work / "after.json", work / "after.json", "--out", out],
                           capsys)  # fmt: skip
    assert code == 0, err
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"{work / 'after.json'} was given twice: shown once"]
    page = out.read_text()
    assert page.count("<th>shapes + uce(circle)</th>") == 1  # one column per run in the per-concept table
    assert page.count("<li><b>UCE&#x27;s edit of &#x27;circle&#x27; in ShapesSD</b>") == 1


def test_a_copy_of_a_results_file_is_shown_once_and_named(work, capsys, caplog):
    (work / "copy.json").write_bytes((work / "after.json").read_bytes())
    with caplog.at_level(logging.WARNING, logger="concept_edit"):
        code, _, err = run(["report", work / "after.json", work / "copy.json", "--out", work / "r.html"], capsys)
    assert code == 0, err
    assert [r.getMessage() for r in caplog.records] == [
        f"{work / 'copy.json'} holds the same results as {work / 'after.json'}: shown once"
    ]
    assert (work / "r.html").read_text().count("<th>shapes + uce(circle)</th>") == 1


def test_a_safetensors_file_is_refused_with_its_name(work, capsys):
    err = refused(["report", work / "edit.safetensors", "--out", work / "r.html"], capsys, work, "edit.safetensors")
    assert "is not a JSON results file" in err and "UnicodeDecodeError" not in err and "codec" not in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"suite": "\xff\xfe"}', "is not a JSON results file (not UTF-8 text)"),
        (b"\x00\x01\x02binary", "is not a JSON results file"),
        (b"[1, 2]", "is not a JSON results file"),
        (b"", "is not a JSON results file"),
        (b'{"suite": ', "cannot read results file"),
    ],
)
def test_a_file_that_is_not_a_json_object_is_refused_with_its_name(work, capsys, content, message):
    (work / "bad.json").write_bytes(content)
    err = refused(["report", work / "before.json", work / "bad.json", "--out", work / "r.html"], capsys, work, message)
    assert str(work / "bad.json") in err


def test_a_folder_given_as_a_results_file_is_refused(work, capsys):
    (work / "folder.json").mkdir()
    err = refused(["report", work / "folder.json", "--out", work / "r.html"], capsys, work, "cannot read results file")
    assert "folder.json" in err
