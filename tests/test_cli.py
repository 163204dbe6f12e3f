"""The CLI end to end on a tiny SD folder: edits, generation, export, compose, and bad input writes nothing."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from concept_edit import Edit, applied
from concept_edit.cli.app import main
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
    code = main(
        ["edit", "uce", "--model", str(sd_folder), "--concept", "cat", "--no-such", "1", "--out", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert code == 2 and "unrecognized arguments: --no-such" in err and err.count("\n") == 1


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


def test_methods_lists_every_method(capsys):
    code, stdout, _ = run(["methods"], capsys)
    listed = [line.split()[0] for line in stdout.splitlines()]
    assert code == 0 and listed == ["advunlearn", "amnesia", "cad", "eigen", "esd", "rece", "uce"]


def test_concepts_and_preserve_lists_come_from_files(sd_folder, tmp_path, capsys):
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("# styles to erase\ncat\n\n  van gogh  \n", encoding="utf-8")
    preserve = tmp_path / "keep.txt"
    preserve.write_text("dog\ntree\n", encoding="utf-8")
    out = tmp_path / "e"
    code, _, err = run(
        ["edit", "uce", "--model", sd_folder, "--concept", "car", "--concepts-file", concepts]
        + ["--preserve-file", preserve, "--preserve", "house", "--out", out],
        capsys,
    )
    assert code == 0, err
    request = Edit.load(out).manifest["request"]
    assert request["concepts"] == ["car", "cat", "van gogh"]
    assert request["preserve"] == ["house", "dog", "tree"]
    code, _, err = run(
        ["edit", "uce", "--model", sd_folder, "--concepts-file", tmp_path / "nope.txt", "--out", tmp_path / "f"], capsys
    )
    assert code == 2 and "no such file" in err and "nope.txt" in err and not (tmp_path / "f").exists()


def test_inspect_counts_each_kind_of_change(cat_edit_dir, capsys):
    code, stdout, _ = run(["inspect", cat_edit_dir], capsys)
    assert code == 0 and json.loads(stdout)["changes"] == "8 low_rank"  # 4 cross-attention layers x K, V
    code, stdout, _ = run(["inspect", cat_edit_dir, "--full"], capsys)
    changes = json.loads(stdout)["changes"]
    assert len(changes) == 8 and {c["kind"] for c in changes} == {"low_rank"} and changes[0]["rank"] == 1


def test_method_inputs_and_list_options_are_rendered_as_flags():
    """Path, repeatable and parsed fields of a method's dataclasses become flags of `edit <method>`."""
    import argparse
    from dataclasses import dataclass
    from pathlib import Path

    from concept_edit.cli.edit import _values
    from concept_edit.cli.flags import dataclass_flags
    from concept_edit.methods import input_field

    @dataclass(frozen=True)
    class Inputs:
        images: Path | None = input_field("a folder of images")
        prompts: tuple[str, ...] = input_field("prompts", default=())
        judge: object = input_field("a judge", parse=lambda text, pipe: ("judge", text, pipe))

    @dataclass(frozen=True)
    class Config:
        scales: tuple[float, ...] = (1.0,)
        steps: int = 3

    parser = argparse.ArgumentParser()
    names = dataclass_flags(parser, Inputs) + dataclass_flags(parser, Config)
    args = parser.parse_args(
        ["--images", "imgs", "--prompts", "a", "--prompts", "b", "--judge", "j", "--scales", "0.5", "--scales", "2"]
    )
    assert _values(args, names) == {
        "images": Path("imgs"),
        "prompts": ("a", "b"),
        "judge": "j",
        "scales": (0.5, 2.0),
    }
    assert _values(parser.parse_args([]), names) == {}


def test_uce_debias_judge_is_an_input_of_the_python_api_and_the_cli():
    from concept_edit import make_inputs
    from concept_edit.methods.uce.fit import UCEInputs

    judge = object()
    assert make_inputs("uce", classifier=judge) == UCEInputs(classifier=judge)
    with pytest.raises(ValueError, match="unknown input"):
        make_inputs("uce", estimator=judge)


def test_verb_modules_do_not_import_each_other():
    import subprocess
    import sys

    code = (
        "import sys, concept_edit.cli.evaluation, concept_edit.cli.demo;"
        "assert 'concept_edit.cli.app' not in sys.modules, 'evaluation imports the top-level cli'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_store_dtype_sets_the_precision_of_the_saved_changes(sd_folder, cat_edit_dir, tmp_path, capsys):
    out = tmp_path / "half.safetensors"
    code, _, err = run(
        ["compose", "--model", sd_folder, "--edit", cat_edit_dir, "--store-dtype", "float16", "--out", out], capsys
    )
    assert code == 0, err
    half = Edit.load(out)
    assert {e.info["dtype"] for e in half.entries} == {"float16"}
    full = Edit.load(cat_edit_dir)
    key = full.targets[0]
    torch.testing.assert_close(half.weight_delta(key), full.weight_delta(key), rtol=2e-3, atol=1e-4)


def test_each_concept_can_have_its_own_guide(sd_folder, tmp_path, capsys):
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("cat: art\ndog: tree\ncar\n", encoding="utf-8")
    out = tmp_path / "e"
    code, _, err = run(["edit", "uce", "--model", sd_folder, "--concepts-file", concepts, "--out", out], capsys)
    assert code == 0, err
    request = Edit.load(out).manifest["request"]
    assert request["concepts"] == ["cat", "dog", "car"] and request["guides"] == ["art", "tree", ""]
    args = ["edit", "uce", "--model", sd_folder, "--concept", "cat", "--concept", "dog", "--guide", "art"]
    code, _, err = run([*args, "--guide", "tree", "--out", tmp_path / "f"], capsys)
    assert code == 0 and Edit.load(tmp_path / "f").manifest["request"]["guides"] == ["art", "tree"]
    code, _, err = run([*args, "--out", tmp_path / "g"], capsys)  # one --guide: every concept's
    assert code == 0 and Edit.load(tmp_path / "g").manifest["request"]["guide"] == "art"
    code, _, err = run([*args, "--guide", "tree", "--guide", "house", "--out", tmp_path / "h"], capsys)
    assert code == 2 and "3 --guide given for 2 concepts" in err and not (tmp_path / "h").exists()


def test_a_colon_in_a_concept_flag_is_part_of_the_concept(sd_folder, tmp_path, capsys):
    code, _, err = run(["edit", "uce", "--model", sd_folder, "--concept", "cat: dog", "--out", tmp_path / "e"], capsys)
    assert code == 0, err
    request = Edit.load(tmp_path / "e").manifest["request"]
    assert request["concepts"] == ["cat: dog"] and request["guide"] is None


ESD_FAST = ["--iterations", "3", "--sampling-steps", "3", "--lr", "0.003"]


def test_esd_edit_checkpoint_and_resume_from_the_cli(sd_folder, tmp_path, capsys, monkeypatch):
    import os
    import signal

    from concept_edit.methods.esd import fit as esd

    out = tmp_path / "no-cat-esd"
    base = ["edit", "esd", "--model", sd_folder, "--concept", "cat", "--variant", "kv", *ESD_FAST, "--out", out]
    code, stdout, _ = run(base, capsys)
    assert code == 0 and "esd: 3 iterations, final loss" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["edit.safetensors"]  # the finished run's checkpoint is gone
    edit = Edit.load(out)
    assert edit.manifest["method"] == "esd" and all("attn2.to_" in c.target for c in edit.changes())

    # Ctrl-C: exit 130, a checkpoint and no edit; the same command refuses to clobber it; --resume finishes the
    # run and gives the edit an uninterrupted run gives
    other = tmp_path / "resumed"
    real_predict, calls = esd._Trainer.predict, []

    def predict_then_ctrl_c(self, batch):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real_predict(self, batch)

    monkeypatch.setattr(esd._Trainer, "predict", predict_then_ctrl_c)
    code, _, err = run([*base[:-1], other], capsys)
    assert code == 130 and "--resume" in err
    assert sorted(p.name for p in other.iterdir()) == ["edit.checkpoint.safetensors"]
    monkeypatch.setattr(esd._Trainer, "predict", real_predict)
    code, _, err = run([*base[:-1], other], capsys)
    assert code == 2 and "--resume" in err
    code, _, _ = run([*base[:-1], other, "--resume"], capsys)
    assert code == 0 and sorted(p.name for p in other.iterdir()) == ["edit.safetensors"]
    for a, b in zip(edit.changes(), Edit.load(other).changes(), strict=True):
        assert torch.equal(a.delta, b.delta)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--eta", "-1"], "eta"),
        (["--iterations", "0"], "iterations"),
        (["--variant", "q"], "variant"),
        (["--guide", "cat"], "is the concept being erased"),
        (["--resume"], "no checkpoint"),
    ],
)
def test_bad_esd_input_is_one_line_and_writes_nothing(sd_folder, tmp_path, capsys, extra, message):
    out = tmp_path / "e"
    code, _, err = run(
        ["edit", "esd", "--model", sd_folder, "--concept", "cat", *ESD_FAST, *extra, "--out", out], capsys
    )
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_the_light_copies_match_the_code_they_stand_for():
    """The CLI reads these without torch; each equals the list the heavy code checks against."""
    from concept_edit.edit import changes, manifest
    from concept_edit.methods.amnesia import backends as amnesia_models
    from concept_edit.methods.amnesia import config as amnesia
    from concept_edit.methods.cad import ablation, attribution
    from concept_edit.methods.cad import config as cad
    from concept_edit.methods.uce import config as uce
    from concept_edit.methods.uce import debias as uce_debias

    assert tuple(uce_debias.VARIANTS) == uce.DEBIAS_VARIANTS and uce_debias.CONTROLLERS == uce.DEBIAS_CONTROLLERS
    assert tuple(changes.KINDS) == manifest.CHANGE_KINDS
    assert attribution.GROUPS is cad.GROUPS and ablation.SCOPES is cad.SCOPES
    assert amnesia_models.GROUPS is amnesia.GROUPS


def test_a_method_is_described_before_its_code_is_imported():
    import subprocess
    import sys

    code = (
        "import sys; from concept_edit.methods import available_methods, get_method\n"
        "names = ['advunlearn', 'amnesia', 'cad', 'eigen', 'esd', 'rece', 'uce']\n"
        "assert available_methods() == names, available_methods()\n"
        "m = get_method('esd'); assert m.config_cls.__name__ == 'ESDConfig' and m.modes == ('erase',)\n"
        "assert 'concept_edit.methods.esd.fit' not in sys.modules and 'torch' not in sys.modules\n"
        "assert m.fit.__name__ == 'fit_esd' and 'concept_edit.methods.esd.fit' in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_every_attack_option_is_a_probe_flag_and_a_wrong_one_is_refused(capsys):
    """Each field of each attack's options dataclass is a flag of `probe` (generated, so none is missing), the
    chosen attack gets the values given, and a flag of another attack is refused before any model loads."""
    import dataclasses

    from concept_edit.attacks.registry import available_attacks, get_attack
    from concept_edit.cli.app import build_parser
    from concept_edit.cli.attacks import _options

    parser = build_parser()
    probe_help = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "probe")[1]
    flags = {s for action in probe_help._actions for s in action.option_strings}
    for name in available_attacks():
        for f in dataclasses.fields(get_attack(name).options_cls):
            assert "--" + f.name.replace("_", "-") in flags, (name, f.name)
    base = ["probe", "--model", "shapes", "--concept", "circle", "--edit", "e", "--out", "o.json"]
    args = parser.parse_args([*base, "--attack", "soft-prompt", "--tokens", "5", "--weight-decay", "0.2"])
    options = _options(args)
    assert (options.tokens, options.weight_decay, options.lr) == (5, 0.2, 0.01)
    args = parser.parse_args([*base, "--attack", "ring-a-bell", "--no-exclude-concept", "--searches", "2"])
    assert (_options(args).exclude_concept, _options(args).searches, _options(args).tokens) == (False, 2, 16)
    with pytest.raises(ValueError, match="--weight-decay does not apply to the ring-a-bell attack"):
        _options(parser.parse_args([*base, "--attack", "ring-a-bell", "--weight-decay", "0.2"]))
    with pytest.raises(ValueError, match="--tokens does not apply to the paraphrase attack"):
        _options(parser.parse_args([*base, "--attack", "paraphrase", "--tokens", "2"]))
