"""Every verb under hostile input: exit status 2 and one line saying what is wrong, and nothing written.

Each case runs the real CLI (in process) on the tiny SD folder or ShapesSD; cases that must generate use
one step and one image. After each refusal the watched folder holds exactly what it held before.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from concept_edit import Edit, EditRequest, fit
from concept_edit.cli.app import main
from concept_edit.edit import state as edit_state
from concept_edit.models import load_pipeline


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(folder.rglob("*"))}


def refused(args, capsys, folder: Path, message: str, code: int = 2) -> str:
    """Run, expect exit `code` with one line containing `message`, and `folder` unchanged."""
    before = snapshot(folder)
    got, _, err = run(args, capsys)
    assert got == code, err
    assert message in err, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert snapshot(folder) == before
    return err


@pytest.fixture
def work(tmp_path, sd_folder):
    """A folder with an edit made for the tiny SD folder and a file that is in the way."""
    edit = fit(load_pipeline(str(sd_folder), device="cpu"), "uce", EditRequest(concepts=("cat",), guide="art"))
    edit.save(tmp_path / "cat")
    (tmp_path / "blocker").write_text("keep me")
    return tmp_path


def uce(sd_folder, *extra):
    return ["edit", "uce", "--model", sd_folder, *extra]


# -- edit ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--concept", "cat", "--preserve", "dog", "--lam", "0"], "ill-conditioned"),
        (["--concept", "cat", "--lam", "nan"], "lam must be a finite number"),
        (["--concept", "cat", "--lam", "-1"], "lam must be >= 0"),
        (["--concept", "cat", "--erase-scale", "inf"], "erase_scale must be a finite number"),
        (["--concept", "cat", "--seed", str(10**30)], "--seed must be <="),
        (["--concept", "cat", "--seed", "-1"], "--seed must be >= 0"),
        (["--concept", "cat", "--preserve", "  CAT "], "cannot be both edited and preserved"),
        (["--concept", "cat", "--guide", " Cat"], "is the concept being erased"),
        (["--concept", "cat", "--concept", "cat "], "listed twice"),
        (["--concept", "cat", "--device", "bogus"], "unknown device 'bogus'"),
        (["--concept", "cat", "--concepts-file", "missing.txt"], "no such file"),
        (
            ["--concept", "doctor", "--mode", "debias", "--attribute", "a", "--attribute", "b", "--ratio", "nan"],
            "--ratio",
        ),
        (["--concept", "doctor", "--mode", "debias", "--attribute", "a", "--attribute", "b"], "needs a classifier"),
    ],
)
def test_edit_refuses_bad_options(sd_folder, work, capsys, extra, message, monkeypatch):
    monkeypatch.chdir(work)
    refused([*uce(sd_folder, *extra), "--out", work / "new"], capsys, work, message)


def test_cuda_on_a_machine_without_it(sd_folder, work, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    refused([*uce(sd_folder, "--concept", "cat", "--device", "cuda"), "--out", work / "new"], capsys, work, "no CUDA")


def test_a_concept_the_tokenizer_does_not_know_is_refused_on_shapes(work, capsys):
    refused(["edit", "uce", "--model", "shapes", "--concept", "\U0001f600", "--out", work / "e"], capsys, work, "[UNK]")


def test_a_binary_concepts_file_is_refused_with_its_name(sd_folder, work, capsys):
    (work / "bin.txt").write_bytes(b"\xff\xfe\x00\x81")
    refused([*uce(sd_folder, "--concepts-file", work / "bin.txt"), "--out", work / "e"], capsys, work, "bin.txt")


def test_existing_output_is_kept_unless_forced(sd_folder, work, capsys):
    refused([*uce(sd_folder, "--concept", "dog"), "--out", work / "cat"], capsys, work, "--force")
    before = (work / "cat" / "edit.safetensors").read_bytes()
    assert run([*uce(sd_folder, "--concept", "dog"), "--out", work / "cat", "--force"], capsys)[0] == 0
    assert (work / "cat" / "edit.safetensors").read_bytes() != before


@pytest.mark.parametrize("verb", ["edit", "generate", "compose", "evaluate", "report", "export", "demo"])
def test_an_output_under_a_file_is_refused_before_any_work(verb, sd_folder, work, capsys):
    out = work / "blocker" / ("x.png" if verb == "generate" else "x.json" if verb == "evaluate" else "x")
    if verb == "report":
        out = work / "blocker" / "x.html"
    args = {
        "edit": uce(sd_folder, "--concept", "dog"),
        "generate": ["generate", "--model", sd_folder, "--prompt", "a cat"],
        "compose": ["compose", "--model", sd_folder, "--edit", work / "cat"],
        "evaluate": ["evaluate", "--model", "shapes", "--suite", "shapes-objects"],
        "report": ["report", work / "nope.json"],
        "export": ["export", "--model", sd_folder, "--edit", work / "cat"],
        "demo": ["demo"],
    }[verb]
    refused([*args, "--out", out], capsys, work, "is a file, not a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_folder_is_found_before_any_work(sd_folder, work, capsys):
    locked = work / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        refused([*uce(sd_folder, "--concept", "dog"), "--out", locked / "e"], capsys, work, "not writable")
    finally:
        locked.chmod(0o700)


# -- edit files ------------------------------------------------------------------------------------------------
def rewrite_manifest(src: Path, dst: Path, mutate) -> Path:
    with safe_open(str(src), framework="pt") as f:
        meta, tensors = json.loads(f.metadata()["concept_edit"]), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta = mutate(meta)
    save_file(tensors, str(dst), metadata={"concept_edit": json.dumps(meta)})
    return dst


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: {k: v for k, v in m.items() if k != "changes"}, "'changes' is missing"),
        (lambda m: [m], "must be a JSON object"),
        (lambda m: {**m, "stats": [1, 2]}, "'stats' must be a dict"),
        (lambda m: {**m, "changes": [{**m["changes"][0], "shape": "big"}]}, "'shape' must be a list"),
    ],
)
@pytest.mark.parametrize("verb", ["inspect", "generate", "compose", "export"])
def test_a_damaged_manifest_is_refused_by_every_verb(verb, mutate, message, sd_folder, work, capsys):
    bad = rewrite_manifest(work / "cat" / "edit.safetensors", work / "bad.safetensors", mutate)
    args = {
        "inspect": ["inspect", bad],
        "generate": ["generate", "--model", sd_folder, "--edit", bad, "--prompt", "a cat", "--out", work / "g.png"],
        "compose": ["compose", "--model", sd_folder, "--edit", bad, "--out", work / "c"],
        "export": ["export", "--model", sd_folder, "--edit", bad, "--out", work / "x"],
    }[verb]
    assert "bad.safetensors" in refused(args, capsys, work, message)


def test_an_edit_holding_nan_with_a_valid_checksum_is_refused(sd_folder, work, capsys):
    src = work / "cat" / "edit.safetensors"
    with safe_open(str(src), framework="pt") as f:
        meta, tensors = json.loads(f.metadata()["concept_edit"]), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    info = meta["changes"][0]["tensors"]["up"]
    tensors[info["name"]] = tensors[info["name"]] * float("nan")
    info["sha256"] = edit_state.sha256(tensors[info["name"]])
    save_file(tensors, str(work / "nan.safetensors"), metadata={"concept_edit": json.dumps(meta)})
    args = ["generate", "--model", sd_folder, "--edit", work / "nan.safetensors", "--prompt", "a cat"]
    refused([*args, "-n", "1", "--steps", "1", "--out", work / "g.png"], capsys, work, "NaN or infinite")


def test_a_bfloat16_load_is_told_why_the_edit_does_not_fit(sd_folder, work, capsys):
    args = ["generate", "--model", sd_folder, "--dtype", "bfloat16", "--edit", work / "cat", "--prompt", "a cat"]
    refused([*args, "--out", work / "g.png"], capsys, work, "bfloat16")


# -- generate ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "0"], "--steps must be >= 1"),
        (["--steps", "-1"], "--steps must be >= 1"),
        (["--steps", "2.5"], "--steps must be an integer"),
        (["--guidance", "inf"], "--guidance must be a finite number"),
        (["--guidance", "nan"], "--guidance must be a finite number"),
        (["-n", "0"], "-n must be >= 1"),
        (["--seed", "99999999999999999999999"], "--seed must be <="),
    ],
)
def test_generate_refuses_bad_numbers(sd_folder, work, capsys, extra, message):
    refused(
        ["generate", "--model", sd_folder, "--prompt", "a cat", *extra, "--out", work / "g.png"], capsys, work, message
    )


def test_generate_keeps_an_existing_image_and_refuses_a_repeated_edit(sd_folder, work, capsys):
    (work / "g.png").write_bytes(b"old")
    base = ["generate", "--model", sd_folder, "--prompt", "a cat", "-n", "1", "--steps", "1"]
    refused([*base, "--out", work / "g.png"], capsys, work, "--force")
    twice = [*base, "--edit", work / "cat", "--edit", work / "cat" / "edit.safetensors", "--out", work / "h.png"]
    refused(twice, capsys, work, "--allow-repeat")
    assert run([*twice, "--allow-repeat"], capsys)[0] == 0
    assert run([*base, "--out", work / "g.png", "--force"], capsys)[0] == 0 and (work / "g.png").read_bytes() != b"old"


def test_a_missing_local_folder_is_not_looked_up_on_the_hub(work, capsys):
    args = ["generate", "--model", work / "no" / "such" / "model", "--prompt", "a", "--out", work / "g.png"]
    err = refused(args, capsys, work, "no such folder")
    assert "download" not in err


def test_truncated_weights_are_called_damaged_not_pickled(_tiny_sd_session, work, capsys):
    folder = work / "model"
    _tiny_sd_session.save_pretrained(folder, safe_serialization=True)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    args = ["generate", "--model", folder, "--prompt", "a cat", "--out", work / "g.png"]
    err = refused(args, capsys, work, "damaged or incomplete")
    assert "pickle" not in err


# -- compose and export -----------------------------------------------------------------------------------------
def test_compose_refuses_its_own_input_as_output_and_a_repeated_edit(sd_folder, work, capsys):
    args = ["compose", "--model", sd_folder, "--edit", work / "cat", "--force"]
    refused([*args, "--out", work / "cat"], capsys, work, "is also an input")
    refused([*args, "--edit", work / "cat", "--out", work / "both"], capsys, work, "--allow-repeat")


def test_export_keeps_an_existing_folder_and_leaves_no_partial_folder_when_killed(sd_folder, work, capsys):
    (work / "x").mkdir()
    (work / "x" / "mine.txt").write_text("mine")
    refused(["export", "--model", sd_folder, "--edit", work / "cat", "--out", work / "x"], capsys, work, "--force")
    script = textwrap.dedent(
        f"""
        import sys, time
        import diffusers
        from concept_edit.cli.app import main
        real = diffusers.DiffusionPipeline.save_pretrained
        def slow(self, folder, **kw):
            real(self, folder, **kw)
            print("written", flush=True)
            time.sleep(60)
        diffusers.DiffusionPipeline.save_pretrained = slow
        sys.exit(main(["export", "--model", {str(sd_folder)!r}, "--edit", {str(work / "cat")!r},
                       "--out", {str(work / "y")!r}]))
        """
    )
    before = snapshot(work)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "written"
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 143 and "terminated" in err and "Traceback" not in err
    assert snapshot(work) == before  # no hidden .y.*.tmp folder left beside --out


def test_an_exported_folder_gets_the_users_permissions(sd_folder, work, capsys):
    assert run(["export", "--model", sd_folder, "--edit", work / "cat", "--out", work / "x"], capsys)[0] == 0
    mask = os.umask(0)
    os.umask(mask)
    assert (work / "x").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (work / "x" / "model_index.json").stat().st_mode & 0o777 == 0o666 & ~mask


# -- evaluate, report, demo -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("suite", "message"),
    [
        ("# head: object\na blob | blob | 0\n", "label 'blob'"),
        ("# head: object\n" + "a " + "very " * 200 + "long circle | circle | 0\n", "tokens"),
        ("# head: object\na circle | circle | -5\n", "outside 0.."),
        ("a circle | circle | 0\n", "'# head:"),
        (b"\x00\xff\xfe binary", "not a UTF-8 text file"),
    ],
)
def test_evaluate_checks_a_custom_suite_before_generating(work, capsys, suite, message):
    path = work / "suite.txt"
    path.write_bytes(suite if isinstance(suite, bytes) else suite.encode())
    args = ["evaluate", "--model", "shapes", "--suite", path, "--steps", "1", "--out", work / "r.json"]
    err = refused(args, capsys, work, message)
    assert "suite" in err


def test_a_one_prompt_suite_is_evaluated_without_a_frechet_distance(work, capsys):
    (work / "one.txt").write_text("# head: object\na circle | circle | 0\n")
    args = ["evaluate", "--model", "shapes", "--suite", work / "one.txt", "--steps", "1", "--out", work / "r.json"]
    code, _, err = run(args, capsys)
    assert code == 0, err
    results = json.loads((work / "r.json").read_text())
    assert "frechet_to_renders" not in results and results["steps"] == 1 and results["guidance"] > 0


def test_report_refuses_a_results_file_with_a_non_numeric_accuracy(work, capsys):
    results = {"suite": "s", "model": "m", "edits": [], "seed": 0, "mean_accuracy": 0.5}
    results["per_concept"] = {"circle": {"accuracy": "high", "n": 4}}
    (work / "r.json").write_text(json.dumps(results))
    refused(["report", work / "r.json", "--out", work / "r.html"], capsys, work, "per_concept['circle']")
    refused(["report", work / "r.json", "--out", work / "r.json", "--force"], capsys, work, "--out must be a .html")


def test_demo_leaves_nothing_behind_when_it_fails(work, capsys, monkeypatch):
    import concept_edit.cli.demo as demo

    def broken(*args, **kwargs):
        raise ValueError("the oracle is missing")

    monkeypatch.setattr(demo, "evaluate", broken)
    refused(["demo", "--n", "1", "--out", work / "demo"], capsys, work, "oracle is missing")


def test_ctrl_c_is_one_line_and_exit_130(sd_folder, work, capsys, monkeypatch):
    import concept_edit.cli.edit as cli

    def interrupted(args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load_model", interrupted)
    err = refused([*uce(sd_folder, "--concept", "dog"), "--out", work / "e"], capsys, work, "interrupted", code=130)
    assert "nothing was written" in err


def test_a_bug_is_one_line_without_v_and_a_traceback_with_it(sd_folder, work, capsys, monkeypatch):
    import concept_edit.cli.edit as cli

    def bug(args, **kwargs):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(cli, "load_model", bug)
    refused([*uce(sd_folder, "--concept", "dog"), "--out", work / "e"], capsys, work, "rerun with -v", code=1)
    with pytest.raises(ZeroDivisionError):
        main(["-v", *[str(a) for a in uce(sd_folder, "--concept", "dog")], "--out", str(work / "e")])


def test_an_edit_made_for_another_model_is_refused_by_every_verb(other_sd_folder, work, capsys):
    for args in (
        ["generate", "--model", other_sd_folder, "--edit", work / "cat", "--prompt", "a", "--out", work / "g.png"],
        ["compose", "--model", other_sd_folder, "--edit", work / "cat", "--out", work / "c"],
        ["export", "--model", other_sd_folder, "--edit", work / "cat", "--out", work / "x"],
    ):
        refused(args, capsys, work, "different base model")
    assert Edit.load(work / "cat").manifest["method"] == "uce"


@pytest.mark.parametrize("verb", ["compose", "evaluate", "report", "demo", "export"])
def test_no_verb_overwrites_an_existing_output_without_force(verb, sd_folder, work, capsys):
    results = {"suite": "s", "model": "m", "edits": [], "seed": 0, "mean_accuracy": 0.5}
    results["per_concept"] = {"circle": {"accuracy": 0.5, "n": 4}}
    (work / "r.json").write_text(json.dumps(results))
    out = {"compose": work / "c.safetensors", "evaluate": work / "e.json", "report": work / "r.html"}.get(verb)
    out = out or work / "folder"
    if verb in ("demo", "export"):
        out.mkdir()
        (out / "keep.txt").write_text("keep")
    else:
        out.write_bytes(b"keep")
    args = {
        "compose": ["compose", "--model", sd_folder, "--edit", work / "cat"],
        "evaluate": ["evaluate", "--model", "shapes", "--suite", "shapes-objects", "--n", "1"],
        "report": ["report", work / "r.json"],
        "demo": ["demo", "--n", "1"],
        "export": ["export", "--model", sd_folder, "--edit", work / "cat"],
    }[verb]
    refused([*args, "--out", out], capsys, work, "pass --force")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["evaluate", "--model", "shapes", "--suite", "shapes-objects", "--n", "0"], "--n must be >= 1"),
        (["evaluate", "--model", "shapes", "--suite", "shapes-objects", "--seed", "-3"], "--seed must be >= 0"),
        (["evaluate", "--model", "shapes", "--suite", "shapes-objects", "--steps", "0"], "--steps must be >= 1"),
        (["evaluate", "--model", "shapes", "--suite", "shapes-objects", "--guidance", "-1"], "--guidance must be >= 0"),
        (["demo", "--n", "-2"], "--n must be >= 1"),
        (["demo", "--seed", "nan"], "--seed must be an integer"),
    ],
)
def test_measuring_verbs_refuse_bad_numbers(work, capsys, args, message):
    refused([*args, "--out", work / ("r.json" if args[0] == "evaluate" else "d")], capsys, work, message)
