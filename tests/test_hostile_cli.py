"""The CLI as a new user meets it: help without loading torch, a closed pipe, a mistyped model, verbs that would
measure nothing. Each case runs the real CLI (in process, or in a subprocess where imports or pipes matter)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_hostile_input import refused

from concept_edit.cli.app import build_parser

HEAVY = ("torch", "diffusers", "transformers")


def _imports_of(args: list[str], stdout=subprocess.DEVNULL) -> tuple[int, list[str], str]:
    """(exit status, heavy modules imported, stderr) of `concept-edit ARGS` run in a fresh interpreter."""
    code = textwrap.dedent(
        f"""
        import json, sys
        from concept_edit.cli.app import main
        status = main(sys.argv[1:])
        sys.stderr.write("\\n" + json.dumps({{"status": status, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code, *args], stdout=stdout, stderr=subprocess.PIPE, text=True)
    *err, last = proc.stderr.rstrip("\n").split("\n")
    result = json.loads(last)
    return result["status"], result["heavy"], "\n".join(err)


def _every_help() -> list[list[str]]:
    """`--help` of the program, of every verb and of every `edit METHOD` (flags rendered from the options)."""
    parser = build_parser()
    verbs = next(a for a in parser._actions if a.dest == "verb").choices
    out = [["--help"], ["--version"], ["methods"]]
    for name, sub in verbs.items():
        out.append([name, "--help"])
        if name == "edit":
            methods = next(a for a in sub._actions if a.dest == "method").choices
            out += [["edit", m, "--help"] for m in methods]
    return out


def test_help_version_methods_and_every_verbs_help_import_no_torch():
    cases = _every_help()
    assert ["edit", "esd", "--help"] in cases and ["probe", "--help"] in cases and ["evaluate", "--help"] in cases
    for args in cases:
        status, heavy, err = _imports_of(args)
        assert status == 0 and heavy == [], (args, heavy, err)


def test_inspect_reads_the_header_only_and_matches_the_loaded_edit(cat_edit_dir):
    from concept_edit import Edit

    status, heavy, err = _imports_of(["inspect", str(cat_edit_dir), "--full"], stdout=subprocess.PIPE)
    assert status == 0 and heavy == [], (heavy, err)
    proc = subprocess.run(
        [sys.executable, "-m", "concept_edit.cli", "inspect", str(cat_edit_dir), "--full"],
        capture_output=True,
        text=True,
    )
    shown = json.loads(proc.stdout)
    edit = Edit.load(cat_edit_dir)
    assert {k: v for k, v in shown.items() if k != "changes"} == edit.manifest
    assert shown["changes"] == [{k: v for k, v in e.info.items() if k != "tensors"} for e in edit.entries]


def test_inspect_into_a_closed_pipe_says_nothing(cat_edit_dir):
    """`concept-edit inspect e | head -1`: the reader has gone; no 'Broken pipe' error, no traceback."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first write: every write meets a closed pipe
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "concept_edit.cli", "inspect", str(cat_edit_dir)],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(write)
    assert proc.stderr == "" and proc.returncode == 141, proc.stderr


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("shape", "unknown model 'shape': did you mean 'shapes'?"),
        ("Shapes", "did you mean 'shapes'?"),
        ("digits", "did you mean 'digits-vae' or 'digits-ddpm'?"),
    ],
)
def test_a_mistyped_model_gets_did_you_mean_before_any_hub_lookup(model, message, tmp_path, capsys, monkeypatch):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub was asked about a typo")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    monkeypatch.setattr("diffusers.DiffusionPipeline.from_pretrained", no_hub)
    args = ["generate", "--model", model, "--prompt", "a circle", "--out", tmp_path / "g.png"]
    refused(args, capsys, tmp_path, message)


def test_a_hub_id_and_an_existing_folder_are_not_taken_for_typos(tmp_path, monkeypatch):
    from concept_edit.models.loading import _refuse_typo

    _refuse_typo("CompVis/stable-diffusion-v1-4")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shape").mkdir()
    _refuse_typo("shape")  # a folder of that name: the user means it


def test_probe_without_an_edit_is_refused(tmp_path, capsys):
    args = ["probe", "--model", "shapes", "--concept", "circle", "--attack", "paraphrase", "--out", tmp_path / "p.json"]
    refused(args, capsys, tmp_path, "probe attacks an edited model: give the edit that erased the concept (--edit)")


@pytest.mark.parametrize("extra", [[], ["--no-baseline"]])
def test_evaluate_refuses_a_suite_that_would_measure_nothing(extra, cat_edit_dir, tmp_path, capsys):
    edit = ["--edit", cat_edit_dir] if extra else []
    args = ["evaluate", "--model", "shapes", "--suite", "artists", *edit, *extra, "--out", tmp_path / "a.json"]
    refused(args, capsys, tmp_path, "the artists suite has no judge: it measures an edit's image change")


def test_the_lazy_packages_keep_their_public_names():
    """`from concept_edit.attacks import probe` is the function even after its module was imported by name."""
    code = textwrap.dedent(
        """
        import sys, types
        import concept_edit
        assert "torch" not in sys.modules
        import concept_edit.attacks.probe
        from concept_edit.attacks import probe
        from concept_edit.evaluation import evaluate
        import concept_edit.edit
        assert callable(probe) and not isinstance(probe, types.ModuleType)
        assert callable(evaluate) and not isinstance(evaluate, types.ModuleType)
        assert concept_edit.fit is concept_edit.methods.registry.fit and concept_edit.Edit.__name__ == "Edit"
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def cat_edit_dir(tmp_path_factory) -> Path:
    """A UCE edit of ShapesSD's 'circle' (ShapesSD ships with the package: no download)."""
    from concept_edit import EditRequest, fit
    from concept_edit.models import load_pipeline

    folder = tmp_path_factory.mktemp("edit") / "circle"
    fit(load_pipeline("shapes", device="cpu"), "uce", EditRequest(concepts=("circle",))).save(folder)
    return folder


@pytest.mark.parametrize("attack", ["paraphrase", "soft-prompt"])
def test_probe_shows_every_phase(attack, sd, caplog):
    """~9 minutes on ShapesSD: each phase says it has started, not only the attack's optimisation."""
    import logging

    from test_attacks import STEPS, always

    from concept_edit import EditRequest, fit
    from concept_edit.attacks import probe

    edit = fit(sd, "uce", EditRequest(concepts=("cat",)))
    prompts = ["a dog"] if attack == "paraphrase" else ["a cat"]
    with caplog.at_level(logging.INFO, logger="concept_edit"):
        probe(sd, "cat", attack, edits=[edit], judge=always(True), prompts=prompts, budget=1, n=1, steps=STEPS,
              progress=True)  # fmt: skip
    stages = [r.getMessage().split(":")[0] for r in caplog.records if r.name.startswith("concept_edit.attacks")]
    assert stages[:3] == ["probe 1/3", "probe 2/3", "probe 3/3"] and stages[3] == attack, stages
    caplog.clear()
    probe(sd, "cat", attack, edits=[edit], judge=always(True), prompts=prompts, budget=1, n=1, steps=STEPS)
    assert not [r for r in caplog.records if r.name.startswith("concept_edit.attacks")]  # quiet unless asked


@pytest.fixture
def no_network(monkeypatch):
    """A machine whose connections fail (HF_HUB_OFFLINE not set): the hub is found unreachable once."""
    import socket

    from concept_edit import hub

    def refuse(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    hub.hub_unreachable.cache_clear()
    yield
    hub.hub_unreachable.cache_clear()


def test_offline_hub_lookups_read_the_cache_only_and_say_why(no_network, monkeypatch):
    """Offline, a judge's weights are looked up in the cache only (no retries) and the one line says why."""
    import transformers

    from concept_edit.evaluation.judges import clip, imagenet

    asked = []

    def from_pretrained(model_id, **kwargs):
        asked.append(kwargs.get("local_files_only"))
        raise OSError(f"{model_id} is not in the cache")

    for cls in ("CLIPModel", "CLIPProcessor", "ResNetForImageClassification", "AutoImageProcessor"):
        monkeypatch.setattr(getattr(transformers, cls), "from_pretrained", from_pretrained)
    clip._cached.cache_clear()
    with pytest.raises(ValueError, match="cannot be reached from here \\(set HF_HUB_OFFLINE=1"):
        clip.load_clip("someone/clip")
    with pytest.raises(ValueError, match="cannot be reached from here"):
        imagenet.load_resnet("someone/resnet")
    assert asked == [True, True]


def test_the_hub_is_asked_once_per_process(no_network, monkeypatch):
    import socket

    from concept_edit import hub

    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)
    assert hub.hub_unreachable() and hub.hub_unreachable() and len(calls) == 1
    assert hub.cache_only() == {"local_files_only": True}
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # behind a proxy a direct connect proves nothing
    hub.hub_unreachable.cache_clear()
    assert hub.cache_only() == {}
