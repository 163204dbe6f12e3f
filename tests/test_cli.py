"""The CLI end to end on a tiny SD folder: edits, generation, export, compose, and bad input writes nothing."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from concept_edit import Edit, applied
from concept_edit.cli import main
from concept_edit.generation import generate, to_array
from concept_edit.models import load_pipeline


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def cat_edit_dir(sd_folder, tmp_path, capsys):
    out = tmp_path / "no-cat"
    code, stdout, _ = run(
        [
            "edit",
            "uce",
            "--model",
            sd_folder,
            "--concept",
            "cat",
            "--guide",
            "art",
            "--preserve",
            "dog",
            "--lam",
            "0.3",
            "--out",
            out,
        ],
        capsys,
    )
    assert code == 0 and "wrote" in stdout
    return out


def test_edit_writes_one_small_file_with_manifest(cat_edit_dir, capsys):
    assert [p.name for p in cat_edit_dir.iterdir()] == ["edit.safetensors"]
    edit = Edit.load(cat_edit_dir)
    assert edit.manifest["config"]["lam"] == 0.3 and edit.manifest["request"]["preserve"] == ["dog"]
    code, stdout, _ = run(["inspect", cat_edit_dir], capsys)
    assert code == 0 and json.loads(stdout)["method"] == "uce"


def test_generate_grid_and_export_match_the_applied_edit(sd_folder, cat_edit_dir, tmp_path, capsys):
    grid = tmp_path / "grid.png"
    code, _, _ = run(
        [
            "generate",
            "--model",
            sd_folder,
            "--edit",
            cat_edit_dir,
            "--prompt",
            "a cat",
            "--prompt",
            "a dog",
            "-n",
            "3",
            "--steps",
            "2",
            "--out",
            grid,
        ],
        capsys,
    )
    assert code == 0
    assert Image.open(grid).size == (3 * 16 + 2 * 2, 2 * 16 + 2)
    export = tmp_path / "exported"
    code, _, _ = run(["export", "--model", sd_folder, "--edit", cat_edit_dir, "--out", export], capsys)
    assert code == 0 and (export / "model_index.json").exists()
    assert not list(export.rglob("*.bin"))
    base, exported = load_pipeline(str(sd_folder), device="cpu"), load_pipeline(str(export), device="cpu")
    with applied(base, Edit.load(cat_edit_dir)):
        expected = to_array(generate(base, ["a cat"], [0], steps=2))
    np.testing.assert_array_equal(to_array(generate(exported, ["a cat"], [0], steps=2)), expected)


def test_compose_two_edits(sd_folder, cat_edit_dir, tmp_path, capsys):
    dog = tmp_path / "no-dog"
    assert run(["edit", "uce", "--model", sd_folder, "--concept", "dog", "--out", dog], capsys)[0] == 0
    both = tmp_path / "both.safetensors"
    code, _, _ = run(["compose", "--model", sd_folder, "--edit", cat_edit_dir, "--edit", dog, "--out", both], capsys)
    assert code == 0 and Edit.load(both).manifest["concepts"] == ["cat", "dog"]


def test_debias_and_moderate_modes_parse(sd_folder, tmp_path, capsys):
    out = tmp_path / "mod"
    assert (
        run(["edit", "uce", "--model", sd_folder, "--concept", "cat", "--mode", "moderate", "--out", out], capsys)[0]
        == 0
    )
    code, _, err = run(
        [
            "edit",
            "uce",
            "--model",
            sd_folder,
            "--concept",
            "doctor",
            "--mode",
            "debias",
            "--attribute",
            "male",
            "--attribute",
            "female",
            "--ratio",
            "0.6",
            "--ratio",
            "0.6",
            "--out",
            tmp_path / "deb",
        ],
        capsys,
    )
    assert code == 2 and "sum to 1" in err and not (tmp_path / "deb").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--concept", ""], "empty concept"),
        (["--concept", "cat", "--guide", "cat"], "guide"),
        ([], "no concept"),
        (["--concept", "cat", "--tokens", "middle"], "tokens"),
    ],
)
def test_bad_edit_requests_fail_cleanly(sd_folder, tmp_path, capsys, extra, message):
    out = tmp_path / "never"
    code, stdout, err = run(["edit", "uce", "--model", sd_folder, *extra, "--out", out], capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert err.count("\n") == 1  # one line
    assert not out.exists()


def test_unknown_option_is_one_argparse_error(sd_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["edit", "uce", "--model", str(sd_folder), "--concept", "cat", "--no-such", "1", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "unrecognized arguments: --no-such" in capsys.readouterr().err


def test_edit_for_another_model_is_refused_and_writes_nothing(other_sd_folder, cat_edit_dir, tmp_path, capsys):
    grid = tmp_path / "grid.png"
    code, _, err = run(
        ["generate", "--model", other_sd_folder, "--edit", cat_edit_dir, "--prompt", "a cat", "--out", grid], capsys
    )
    assert code == 2 and "different base model" in err and not grid.exists()
    code, _, err = run(["export", "--model", other_sd_folder, "--edit", cat_edit_dir, "--out", tmp_path / "x"], capsys)
    assert code == 2 and not (tmp_path / "x").exists()


def test_output_that_is_a_file_is_refused(sd_folder, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    code, _, err = run(["edit", "uce", "--model", sd_folder, "--concept", "cat", "--out", blocker], capsys)
    assert code == 2 and "is a file" in err and blocker.read_text() == "keep me"


def test_missing_hub_model_gives_one_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(
        ["edit", "uce", "--model", "no-such-org/no-such-model", "--concept", "cat", "--out", tmp_path / "e"], capsys
    )
    assert code == 2 and "no-such-org/no-such-model" in err and "download" in err.lower()
    assert err.count("\n") == 1


def test_pickled_weights_are_refused_unless_allowed(_tiny_sd_session, tmp_path):
    from concept_edit.models import ModelLoadError

    folder = tmp_path / "pickled"
    _tiny_sd_session.save_pretrained(folder, safe_serialization=False)
    with pytest.raises(ModelLoadError, match="pickled"):
        load_pipeline(str(folder), device="cpu")
    pipe = load_pipeline(str(folder), device="cpu", allow_pickle=True)
    assert torch.equal(pipe.unet.conv_in.weight, _tiny_sd_session.unet.conv_in.weight)


def test_methods_lists_uce(capsys):
    code, stdout, _ = run(["methods"], capsys)
    assert code == 0 and stdout.startswith("uce")
