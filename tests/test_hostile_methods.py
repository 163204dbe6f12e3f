"""The methods (esd, cad, amnesia, eigen, uce) under hostile input: one line, exit 2, nothing written, no work.

Each case runs the real CLI (in process) on the tiny SD folder (its tokenizer reads 16 tokens) or ShapesSD
(32); every refusal comes before any sampling or training, so each case takes about as long as a load.
"""

import json

import pytest
import torch
from safetensors.torch import save_file
from test_hostile_input import refused

from concept_edit import EditRequest, fit
from concept_edit.models import load_pipeline

LONG = " ".join(["cat"] * 40)  # 42 tokens with start and end: more than either test model reads
NOT_UTF8 = "caf\udce9"  # how Python hands over the argv byte 0xe9 (Latin-1 "é"), which is not UTF-8


def edit(method, model, *extra):
    return ["edit", method, "--model", model, *extra]


# -- one check of every text the encoder reads, for every method -------------------------------------------------
@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("esd", ["--concept", NOT_UTF8]),
        ("eigen", ["--concept", NOT_UTF8]),
        ("cad", ["--concept", "cat", "--guide", NOT_UTF8]),
        ("amnesia", ["--concept", NOT_UTF8, "--preserve", "dog"]),
        ("uce", ["--concept", "cat", "--preserve", NOT_UTF8]),
    ],
)
def test_a_concept_that_is_not_utf8_is_one_line(method, extra, sd_folder, tmp_path, capsys):
    err = refused([*edit(method, sd_folder, *extra), "--out", tmp_path / "e"], capsys, tmp_path, "not UTF-8 text")
    assert "caf\\xe9" in err  # the byte as the user typed it


@pytest.mark.parametrize(
    ("method", "extra", "what"),
    [
        ("esd", ["--concept", LONG], "concept"),
        ("esd", ["--concept", "cat", "--guide", LONG], "guide"),
        ("eigen", ["--concept", LONG], "concept"),
        ("cad", ["--concept", LONG], "concept"),
        ("amnesia", ["--concept", LONG, "--preserve", "dog"], "concept"),
        ("amnesia", ["--concept", "cat", "--preserve", "dog", "--surrogate", LONG], "surrogate"),
        ("amnesia", ["--concept", "cat", "--preserve", LONG], "preserved concept"),
    ],
)
def test_a_concept_longer_than_the_encoder_reads_is_refused(method, extra, what, sd_folder, tmp_path, capsys):
    err = refused([*edit(method, sd_folder, *extra), "--out", tmp_path / "e"], capsys, tmp_path, "reads at most 16")
    assert err.split(": error: ")[-1].startswith(f"{what} 'cat cat")


def test_the_attribute_verb_checks_its_concept_as_the_methods_do(sd_folder, tmp_path, capsys):
    args = ["attribute", "--model", sd_folder, "--concept", LONG, "--out", tmp_path / "s.safetensors"]
    refused(args, capsys, tmp_path, "reads at most 16")


@pytest.mark.parametrize(
    "extra",
    [
        ["--concept", "\u2603", "--preserve", "a square"],
        ["--concept", "circle", "--preserve", "a square", "--surrogate", "\u2603"],
        ["--concept", "circle", "--preserve", "x" * 500],
    ],
)
def test_amnesia_refuses_text_the_tokenizer_does_not_know_as_esd_does(extra, tmp_path, capsys):
    refused([*edit("amnesia", "shapes", *extra), "--out", tmp_path / "e"], capsys, tmp_path, "[UNK]")


# -- options that are out of range, too large for the model, or do nothing ----------------------------------------
@pytest.mark.parametrize(
    ("method", "extra", "message"),
    [
        ("esd", ["--eta", "1e30"], "eta must be <= 100"),
        ("esd", ["--lora-rank", "100000"], "lora_rank 100000 is larger than any trained weight allows"),
        ("esd", ["--lora-alpha", "4"], "lora_alpha 4.0 does nothing"),
        ("esd", ["--schedule", "official", "--pool-trajectories", "3"], "pool_trajectories 3 does nothing"),
        ("esd", ["--refresh-every", "5"], "refresh_every 5 does nothing: the stream schedule draws no pool"),
        ("eigen", ["--eraser", "leace", "--k", "2"], "k 2 does nothing"),
        ("cad", ["--steps", "5", "--timesteps", "50"], "timesteps 50 is more than the 5 DDIM steps"),
        ("uce", ["--debias-images", "5"], "debias_images 5 does nothing: the debias_ options tune debias"),
        ("uce", ["--preserve-scale", "2"], "preserve_scale 2.0 does nothing"),
    ],
)
def test_method_options_that_cannot_work_are_refused(method, extra, message, sd_folder, tmp_path, capsys):
    args = [*edit(method, sd_folder, "--concept", "cat", *extra), "--out", tmp_path / "e"]
    refused(args, capsys, tmp_path, message)


def test_cad_amplify_refuses_the_erase_sampling_options(tmp_path, capsys):
    args = edit("cad", "shapes", "--concept", "circle", "--mode", "amplify", "--images", "shapes:circle:2")
    refused([*args, "--samples", "2", "--out", tmp_path / "e"], capsys, tmp_path, "samples 2 does nothing")


def test_eigen_sampling_that_diverges_is_one_line_not_a_linalg_error(sd_folder, tmp_path, capsys):
    args = edit("eigen", sd_folder, "--concept", "cat", "--samples", "1", "--steps", "3", "--guidance", "1e30")
    err = refused([*args, "--out", tmp_path / "e"], capsys, tmp_path, "diverged")
    assert "lower --guidance" in err and "LinAlgError" not in err


def test_activation_statistics_refuse_a_non_finite_activation():
    from concept_edit.eigen.statistics import ActivationStatistics, NonFiniteActivations

    stats = ActivationStatistics(["layer"], [0])
    with pytest.raises(NonFiniteActivations, match="at layer are NaN or infinite"):
        stats.add("layer", torch.tensor([[1.0, float("nan")]]), 0)


# -- CAD scores files ---------------------------------------------------------------------------------------------
def scores_file(path, pipe, value: float, **meta_extra):
    """A CAD scores file for `pipe`'s feed-forward weights holding `value` everywhere."""
    from concept_edit.methods.cad.attribution import GROUPS, group_weights
    from concept_edit.methods.cad.fit import _weights_digest

    weights = group_weights(pipe, GROUPS)
    meta = {
        "format": "concept-edit-cad-scores/1",
        "base_model": "tiny",
        "weights_hash": _weights_digest(pipe, weights),
        "request": EditRequest(concepts=("cat",)).to_dict(),
        "config": {"modules": ["ff"], "samples": 4, "steps": None, "timesteps": None, "guidance": 3.0},
        "seed": 0,
        "samples": 4,
        **meta_extra,
    }
    save_file({n: torch.full(w.shape, value) for n, w in weights.items()}, str(path), {"cad": json.dumps(meta)})
    return path


@pytest.mark.parametrize(
    ("value", "extra", "message"),
    [
        (float("nan"), [], "nan.safetensors holds NaN or infinite scores"),
        (1.0, ["--steps", "7"], "was computed with steps None; steps 7 does nothing"),
        (-1.0, [], "(ablate_ratio 0.001, scope row, row_minimum 1)"),
    ],
)
def test_cad_scores_files_are_checked_and_the_options_named(value, extra, message, sd_folder, tmp_path, capsys):
    name = "nan.safetensors" if value != value else "scores.safetensors"
    path = scores_file(tmp_path / name, load_pipeline(str(sd_folder), device="cpu"), value)
    args = [*edit("cad", sd_folder, "--concept", "cat", "--scores", path, *extra), "--out", tmp_path / "e"]
    err = refused(args, capsys, tmp_path, message)
    assert "--row-minimum 0" not in err  # no flag the user did not give


# -- the attacks and edits: the message names the real cause ---------------------------------------------------
def test_a_soft_prompt_that_diverges_blames_the_step_size_not_the_model(sd):
    from concept_edit.attacks import FunctionJudge, SoftPromptOptions
    from concept_edit.attacks.drawing import Item
    from concept_edit.attacks.soft_prompt import run_soft_prompt

    options = SoftPromptOptions(tokens=2, eval_every=1, timesteps=2, lr=1e30)
    with pytest.raises(ValueError, match=r"the attack diverged at step 1 .*lower --lr \(got 1e\+30\)"):
        run_soft_prompt(sd, FunctionJudge(lambda images: [False] * len(images), "never"), [Item("a cat", 0)],
                        budget=3, seed=0, steps=2, guidance=3.0, options=options)  # fmt: skip


def test_the_edit_holding_nan_among_several_is_named(sd_folder, tmp_path, capsys):
    from safetensors import safe_open

    from concept_edit.edit import state as edit_state

    pipe = load_pipeline(str(sd_folder), device="cpu")
    fit(pipe, "uce", EditRequest(concepts=("cat",))).save(tmp_path / "good")
    fit(pipe, "uce", EditRequest(concepts=("dog",))).save(tmp_path / "dog")
    with safe_open(str(tmp_path / "dog" / "edit.safetensors"), framework="pt") as f:
        meta, tensors = json.loads(f.metadata()["concept_edit"]), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    info = meta["changes"][0]["tensors"]["up"]  # NaN under a valid checksum: only the value check finds it
    tensors[info["name"]] = tensors[info["name"]] * float("nan")
    info["sha256"] = edit_state.sha256(tensors[info["name"]])
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={"concept_edit": json.dumps(meta)})
    args = ["generate", "--model", sd_folder, "--edit", tmp_path / "good", "--edit", tmp_path / "bad.safetensors"]
    args += ["--prompt", "a cat", "-n", "1", "--steps", "1", "--out", tmp_path / "g.png"]
    assert "bad.safetensors" in refused(args, capsys, tmp_path, "NaN or inf")
