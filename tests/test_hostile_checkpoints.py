"""Hostile input against outputs, checkpoints and caches (issue 26: data loss, overwrites, late failures).

Every case runs the real CLI in process on the tiny SD folder with 1-3 iterations and checks: exit status,
one line saying what is wrong (progress bars aside), and the watched folder unchanged where nothing may be
written. Each case failed before the fix it guards.
"""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from concept_edit import EditRequest, fit
from concept_edit.cli.app import main
from concept_edit.models import load_pipeline
from concept_edit.training import save_checkpoint

ESD = ["--iterations", "3", "--sampling-steps", "3", "--lr", "0.003"]
CAD = ["--samples", "2", "--steps", "4", "--batch-size", "3"]
AMNESIA = ["--steps", "3", "--lr", "0.001", "--batch-size", "2", "--fisher-samples", "2", "--fisher-timesteps",
           "4", "--replay-samples", "3", "--surrogate-samples", "2", "--sampling-steps", "2",
           "--preserve", "a dog", "--surrogate", "uniform"]  # fmt: skip
_BAR = re.compile(r"\d+%\||it/s\]|s/it\]|\?it/s")


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def lines(err: str) -> list[str]:
    """stderr without progress bars."""
    return [line for line in re.split(r"[\r\n]", err) if line.strip() and not _BAR.search(line)]


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(folder.rglob("*"))}


def refused(args, capsys, folder, message, code=2):
    before = snapshot(folder)
    got, _, err = run(args, capsys)
    said = lines(err)
    assert got == code, err
    assert len(said) == 1 and message in said[0] and "Traceback" not in err, err
    assert snapshot(folder) == before
    return said[0]


def esd(sd_folder, *extra):
    return ["edit", "esd", "--model", sd_folder, "--concept", "cat", "--variant", "kv", *ESD, *extra]


def amnesia(sd_folder, *extra):
    return ["edit", "amnesia", "--model", sd_folder, "--concept", "cat", *AMNESIA, *extra]


def cad(sd_folder, *extra):
    return ["edit", "cad", "--model", sd_folder, "--concept", "cat", *CAD, *extra]


@pytest.fixture
def edit_file(tmp_path, sd_folder):
    """A user's finished edit (a file that must never be taken for a checkpoint)."""
    edit = fit(load_pipeline(str(sd_folder), device="cpu"), "uce", EditRequest(concepts=("cat",), guide="art"))
    return edit.save(tmp_path / "mine.safetensors")


# -- data loss and overwrites ---------------------------------------------------------------------------------
@pytest.mark.parametrize("verb", [esd, cad])
def test_a_checkpoint_that_is_the_output_is_refused_up_front(sd_folder, tmp_path, capsys, verb):
    refused(verb(sd_folder, "--checkpoint", tmp_path / "e" / "edit.safetensors", "--out", tmp_path / "e"), capsys,
            tmp_path, "a finished run deletes its checkpoint")  # fmt: skip
    refused(verb(sd_folder, "--checkpoint", tmp_path / "x.safetensors", "--out", tmp_path / "x.safetensors"), capsys,
            tmp_path, "a finished run deletes its checkpoint")  # fmt: skip
    refused(verb(sd_folder, "--checkpoint", tmp_path / "e", "--out", tmp_path / "e"), capsys, tmp_path,
            "a finished run deletes its checkpoint")  # fmt: skip
    spelt_apart = tmp_path / "e" / ".." / "e" / "edit.safetensors"  # the same file: `..` and symlinks resolved
    refused(verb(sd_folder, "--checkpoint", spelt_apart, "--out", tmp_path / "e"), capsys, tmp_path,
            "a finished run deletes its checkpoint")  # fmt: skip
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    linked, real = tmp_path / "link" / "x.safetensors", tmp_path / "real" / "x.safetensors"
    refused(verb(sd_folder, "--checkpoint", linked, "--out", real), capsys, tmp_path,
            "a finished run deletes its checkpoint")  # fmt: skip


def test_a_file_that_is_not_this_methods_checkpoint_is_never_one(sd_folder, tmp_path, capsys, edit_file):
    base = esd(sd_folder, "--checkpoint", edit_file, "--out", tmp_path / "e")
    err = refused(base, capsys, tmp_path, "is not an esd checkpoint: it is a concept-edit edit")
    assert "interrupted" not in err and "--force" not in err
    refused([*base, "--force"], capsys, tmp_path, "is a concept-edit edit")  # --force is for --out only
    refused([*base, "--resume"], capsys, tmp_path, "is a concept-edit edit")  # was KeyError 'tree'
    (tmp_path / "empty").mkdir()
    refused(esd(sd_folder, "--checkpoint", tmp_path / "empty", "--out", tmp_path / "e"), capsys, tmp_path,
            "is a folder")  # fmt: skip
    other = tmp_path / "other.safetensors"
    save_checkpoint(other, 1, {}, kind="cad", grads={"w": torch.zeros(2)})
    refused(esd(sd_folder, "--checkpoint", other, "--out", tmp_path / "e", "--force"), capsys, tmp_path,
            "is not an esd checkpoint: it is a checkpoint of cad")  # fmt: skip


def test_amnesia_fisher_cache_is_not_the_output_and_its_partial_is_not_discarded(sd_folder, tmp_path, capsys):
    refused(amnesia(sd_folder, "--fisher", tmp_path / "e", "--out", tmp_path / "e"), capsys, tmp_path,
            "give the Fisher cache its own path")  # fmt: skip
    refused(amnesia(sd_folder, "--fisher", tmp_path / "x.safetensors", "--out", tmp_path / "x.safetensors"), capsys,
            tmp_path, "give the Fisher cache its own path")  # fmt: skip
    # an interrupted run's Fisher estimate: the same command without --resume refuses to clobber it
    partial = tmp_path / "e" / "edit.checkpoint.fisher.safetensors"
    save_checkpoint(partial, 1, {"fisher": {}}, kind="amnesia-fisher", sums=[torch.ones(2)])
    refused(amnesia(sd_folder, "--out", tmp_path / "e"), capsys, tmp_path, "an interrupted run left a checkpoint")


def test_amnesia_resume_from_another_methods_checkpoint_is_refused_before_any_work(sd, tmp_path, monkeypatch):
    from concept_edit.methods import make_config, make_inputs
    from concept_edit.methods.amnesia import fit as method

    ckpt = tmp_path / "run.safetensors"
    save_checkpoint(ckpt, 1, {}, kind="esd", trained=[torch.zeros(2)])

    def no_work(*args, **kwargs):
        raise AssertionError("the Fisher samples were drawn before the checkpoint was checked")

    monkeypatch.setattr(method, "_plan", no_work)
    config = make_config(
        "amnesia", steps=1, fisher_samples=1, replay_samples=1, surrogate_samples=1, surrogate="uniform"
    )
    request = EditRequest(concepts=("cat",), preserve=("a dog",))
    with pytest.raises(ValueError, match="is a checkpoint of esd"):
        fit(sd, "amnesia", request, config, make_inputs("amnesia", checkpoint=ckpt, resume=True), progress=False)


def test_empty_paths_are_refused_before_any_work(sd_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused(["edit", "uce", "--model", sd_folder, "--concept", "cat", "--out", ""], capsys, tmp_path, "--out is empty")
    refused(esd(sd_folder, "--out", ""), capsys, tmp_path, "--out is empty")
    refused(esd(sd_folder, "--checkpoint", "", "--out", "e"), capsys, tmp_path, "empty path")
    refused(amnesia(sd_folder, "--fisher", "", "--out", "e"), capsys, tmp_path, "empty path")
    refused(
        ["evaluate", "--model", sd_folder, "--suite", "artists", "--store", "", "--out", "r.json"],
        capsys,
        tmp_path,
        "--store is empty",
    )


# -- one run per output -----------------------------------------------------------------------------------------
def test_a_second_run_on_the_same_output_is_refused(sd_folder, tmp_path, capsys, edit_file):
    from concept_edit.io import output_lock

    out = tmp_path / "e"
    uce = ["edit", "uce", "--model", sd_folder, "--concept", "cat", "--out", out]
    with output_lock(out / "edit.safetensors"):  # the file an edit verb writes for `--out e`
        err = refused(uce, capsys, tmp_path, "is being written by another run")
        assert f"pid {os.getpid()}" in err
        refused(esd(sd_folder, "--out", out), capsys, tmp_path, "is being written by another run")
    lora = tmp_path / "l.safetensors"
    with output_lock(lora):
        refused(
            ["export-lora", "--model", sd_folder, "--edit", edit_file, "--out", lora],
            capsys,
            tmp_path,
            "being written by another run",
        )
    store = tmp_path / "store"
    with output_lock(store):
        evaluate = ["evaluate", "--model", sd_folder, "--suite", "artists", "--store", store, "--out", tmp_path / "r"]
        refused(evaluate, capsys, tmp_path,
                "being written by another run")  # fmt: skip
    fisher = tmp_path / "fisher"
    with output_lock(fisher):
        refused(amnesia(sd_folder, "--fisher", fisher, "--out", tmp_path / "a"), capsys, tmp_path,
                "being written by another run")  # fmt: skip
    code, _, err = run(uce, capsys)  # the lock is gone with its holder; no lock file is left behind
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e", "mine.safetensors"]


def test_the_lock_is_held_across_processes(sd_folder, tmp_path, capsys):
    out = tmp_path / "e"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from concept_edit.io import output_lock
            with output_lock({str(out / "edit.safetensors")!r}):  # another spelling of the same output
                print("locked", flush=True)
                sys.stdin.readline()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        err = refused(["edit", "uce", "--model", sd_folder, "--concept", "cat", "--out", out], capsys, tmp_path,
                      "is being written by another run")  # fmt: skip
        assert f"pid {holder.pid}" in err
    finally:
        holder.communicate("\n", timeout=60)
    code, _, err = run(["edit", "uce", "--model", sd_folder, "--concept", "cat", "--out", out], capsys)
    assert code == 0, err


# -- late failures -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("verb", "extra", "message"),
    [
        (esd, ["--sampling-guidance", "1e30"], "training diverged"),
        (esd, ["--lr", "1e30", "--iterations", "3", "--checkpoint-every", "1"], "diverged"),
        (cad, ["--guidance", "1e30"], "is not finite"),
    ],
)
def test_a_run_that_diverges_stops_and_leaves_no_checkpoint(sd_folder, tmp_path, capsys, verb, extra, message):
    err = refused(verb(sd_folder, *extra, "--out", tmp_path / "e"), capsys, tmp_path, message)
    assert "lower --" in err
    code, _, err = run(verb(sd_folder, "--out", tmp_path / "e"), capsys)  # the corrected run is not blocked
    assert code == 0, err


def test_amnesia_that_diverges_keeps_only_its_fisher_and_says_so(sd_folder, tmp_path, capsys):
    out = tmp_path / "e"
    code, _, err = run(amnesia(sd_folder, "--lr", "1e30", "--checkpoint-every", "1", "--out", out), capsys)
    said = lines(err)
    partial = out / "edit.checkpoint.fisher.safetensors"
    assert code == 2 and len(said) == 1 and "diverged" in said[0] and "lower --lr" in said[0], err
    assert f"the Fisher estimate is kept at {partial}" in said[0]
    assert sorted(p.name for p in out.iterdir()) == [partial.name]  # no training checkpoint of garbage
    code, _, err = run(amnesia(sd_folder, "--out", out, "--resume"), capsys)  # the corrected run reuses it
    assert code == 0, err


@pytest.mark.parametrize(("value", "what"), [(float("nan"), "non-finite"), (-1.0, "negative")])
def test_a_fisher_cache_holding_nan_or_negative_values_is_named(sd_folder, tmp_path, capsys, value, what):
    cache = tmp_path / "fisher.safetensors"
    code, _, err = run(amnesia(sd_folder, "--fisher", cache, "--out", tmp_path / "a"), capsys)
    assert code == 0, err
    from safetensors import safe_open

    with safe_open(str(cache), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    first = sorted(tensors)[0]
    tensors[first] = torch.full_like(tensors[first], value)  # a diagonal Fisher is a mean of squares: >= 0
    save_file(tensors, str(cache), metadata=meta)
    refused(amnesia(sd_folder, "--fisher", cache, "--out", tmp_path / "b"), capsys, tmp_path,
            f"--fisher: {cache} holds {what} values")  # fmt: skip


def test_a_full_disk_keeps_the_last_checkpoint_and_says_where(sd_folder, tmp_path, capsys, monkeypatch):
    from concept_edit import io

    real, calls = io.save_file, []

    def fills_up(tensors, path, metadata=None):  # as safetensors reports ENOSPC
        calls.append(path)
        if len(calls) >= 2 and not ("concept_edit" in metadata and edit_fits):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(io, "save_file", fills_up)
    out, edit_fits = tmp_path / "e", True
    code, _, err = run(esd(sd_folder, "--checkpoint-every", "1", "--out", out), capsys)
    said = lines(err)
    assert code == 2 and len(said) == 1 and "disk is full" in said[0], err
    checkpoint = out / "edit.checkpoint.safetensors"
    assert f"step 1 is kept at {checkpoint}" in said[0] and checkpoint.exists()
    assert sorted(p.name for p in out.iterdir()) == ["edit.checkpoint.safetensors"]  # no temporary file left
    monkeypatch.setattr(io, "save_file", real)
    code, _, err = run(esd(sd_folder, "--resume", "--out", out), capsys)
    assert code == 0, err

    # the disk fills when the finished edit is written: the training is kept in its checkpoint
    monkeypatch.setattr(io, "save_file", fills_up)
    calls.clear()
    edit_fits = False
    code, _, err = run(esd(sd_folder, "--checkpoint-every", "5", "--out", tmp_path / "f"), capsys)
    said = lines(err)
    assert code == 2 and len(said) == 1 and "disk is full" in said[0] and "--resume" in said[0], err
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["edit.checkpoint.safetensors"]


def test_a_checkpoint_under_a_file_is_one_clear_line(sd_folder, tmp_path, capsys):
    (tmp_path / "blocker").write_text("keep me")
    refused(esd(sd_folder, "--checkpoint", tmp_path / "blocker" / "c.safetensors", "--out", tmp_path / "e"), capsys,
            tmp_path, "blocker is a file, not a folder")  # fmt: skip


def test_sigterm_in_amnesia_training_says_what_is_kept(sd_folder, tmp_path, capsys, monkeypatch):
    from concept_edit.cli.app import Terminated
    from concept_edit.methods.amnesia import ewc

    real = ewc.EWCPenalty.add_gradient_

    def terminated(self):
        raise Terminated

    monkeypatch.setattr(ewc.EWCPenalty, "add_gradient_", terminated)
    out = tmp_path / "e"
    code, _, err = run(amnesia(sd_folder, "--out", out), capsys)
    said = lines(err)
    partial = out / "edit.checkpoint.fisher.safetensors"
    assert code == 143 and len(said) == 1, err
    assert "nothing was written" not in said[0] and f"Fisher estimate is kept at {partial}" in said[0], err
    assert "--resume" in said[0] and partial.exists()
    monkeypatch.setattr(ewc.EWCPenalty, "add_gradient_", real)
    code, _, err = run(amnesia(sd_folder, "--out", out, "--resume"), capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["edit.safetensors"]


# -- internal errors -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("verb", [esd, amnesia, cad])
@pytest.mark.parametrize("every", ["0", "-5"])
def test_checkpoint_every_below_one_is_refused(sd_folder, tmp_path, capsys, verb, every):
    refused(verb(sd_folder, "--checkpoint-every", every, "--out", tmp_path / "e"), capsys, tmp_path,
            "--checkpoint-every must be >= 1")  # fmt: skip


@pytest.mark.parametrize("kind", ["random", "truncated", "folder", "nan"])
def test_resume_from_garbage_names_the_file(sd, sd_folder, tmp_path, capsys, kind):
    from concept_edit.io import load_tree, save_tree
    from concept_edit.methods import make_config, make_inputs

    checkpoint = tmp_path / "run.safetensors"
    if kind == "random":
        checkpoint.write_bytes(os.urandom(4096))
    elif kind == "folder":
        checkpoint.mkdir()
    else:  # a real checkpoint of the same run (the API keeps it), then damaged
        config = make_config("esd", variant="kv", iterations=3, sampling_steps=3, lr=0.003)
        inputs = make_inputs("esd", checkpoint=checkpoint)
        fit(sd, "esd", EditRequest(concepts=("cat",)), config, inputs, progress=False)
        if kind == "truncated":
            checkpoint.write_bytes(checkpoint.read_bytes()[:-6])
        else:
            tree = load_tree(checkpoint)
            tree["trained"][0].fill_(float("nan"))
            marker = json.dumps({"format": "concept-edit-checkpoint/1", "kind": "esd"})
            save_tree(checkpoint, tree, metadata={"checkpoint": marker})
    message = {"random": "not a readable safetensors file", "truncated": "not a readable",
               "folder": "is a folder", "nan": "holds non-finite values"}[kind]  # fmt: skip
    out = tmp_path / "e"
    err = refused(esd(sd_folder, "--checkpoint", checkpoint, "--resume", "--out", out), capsys, tmp_path, message)
    assert str(checkpoint) in err


def test_an_immutable_checkpoint_or_fisher_folder_is_found_before_any_work(sd_folder, tmp_path, capsys):
    frozen = tmp_path / "frozen"
    frozen.mkdir()
    if subprocess.run(["chattr", "+i", str(frozen)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        refused(esd(sd_folder, "--checkpoint", frozen / "c.safetensors", "--out", tmp_path / "e"), capsys, tmp_path,
                f"cannot write {frozen / 'c.safetensors'}: Operation not permitted")  # fmt: skip
        refused(amnesia(sd_folder, "--fisher", frozen / "f", "--out", tmp_path / "e"), capsys, tmp_path,
                "Operation not permitted")  # fmt: skip
    finally:
        subprocess.run(["chattr", "-i", str(frozen)], check=True)


@pytest.mark.parametrize("option", ["--checkpoint", "--fisher"])
def test_an_unwritable_checkpoint_or_fisher_folder_is_found_before_any_work(sd_folder, tmp_path, capsys, monkeypatch,
                                                                            option):  # fmt: skip
    """As root a read-only or immutable folder cannot be made here, so the kernel's refusal is simulated: opening
    anything inside `ro/` fails with EACCES, as it does for a user on a read-only or `chattr +i` folder."""
    import errno

    from concept_edit import io as ce_io
    from concept_edit.methods.amnesia import fit as method

    ro = tmp_path / "ro"
    ro.mkdir()
    real_open = os.open

    def guarded(path, *args, **kwargs):
        if os.path.dirname(os.fspath(path)) == str(ro):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    def no_work(*args, **kwargs):
        raise AssertionError("samples were drawn before the folder was checked")

    monkeypatch.setattr(ce_io.os, "open", guarded)
    monkeypatch.setattr(method, "_plan", no_work)
    target = ro / ("c.safetensors" if option == "--checkpoint" else "fisher")
    err = refused(amnesia(sd_folder, option, target, "--out", tmp_path / "e"), capsys, tmp_path, "cannot write")
    assert "Permission denied" in err
