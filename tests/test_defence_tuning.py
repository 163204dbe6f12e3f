"""benchmarks/defence_tuning.py's option parsing and its two ways of making an edit from others: a stage fitted on
top (--then) and the average of saved fits (--average)."""

import sys
from pathlib import Path

import pytest
import torch
from test_edit_kinds import ATTN, make_change, make_edit, unet_output

from concept_edit import EditRequest, applied, fit, make_config

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from defence_tuning import average_edits, fit_on_top, parse_configs, parse_stages  # noqa: E402


def test_parse_configs_reads_numbers_booleans_and_words():
    expected = [{"lr": 0.0003, "iterations": 250, "erase_plain": True, "modules": "x"}, {"null_space": False}]
    assert parse_configs("lr=3e-4,iterations=250,erase_plain=True,modules=x;null_space=false") == expected


def test_parse_stages_reads_methods_and_their_options():
    expected = [("uce", {}), ("rece", {"rounds": 2, "derive_lam": 0.5})]
    assert parse_stages("uce; rece:rounds=2,derive_lam=0.5;") == expected


def test_average_is_the_mean_of_each_dense_delta(sd, tmp_path):
    first = make_edit(sd, make_change(sd, "dense", seed=1))
    second = make_edit(sd, make_change(sd, "dense", seed=2))
    paths = [str(first.save(tmp_path / "a.safetensors")), str(second.save(tmp_path / "b.safetensors"))]
    (change,) = average_edits(sd, [first, second], paths).changes()
    (a,), (b,) = first.changes(), second.changes()
    torch.testing.assert_close(change.delta, (a.delta + b.delta) / 2, rtol=0, atol=1e-7)


def test_average_refuses_edits_it_cannot_average(sd, tmp_path):
    dense = make_edit(sd, make_change(sd, "dense", seed=1))
    low_rank = make_edit(sd, make_change(sd, "low_rank", seed=2))
    with pytest.raises(SystemExit, match="same tensors, each by a dense delta"):
        average_edits(sd, [dense, low_rank], ["a", "b"])


def test_a_stage_fitted_on_top_is_fitted_on_the_edited_model_and_composed(sd):
    """The composed edit equals the first edit, then the second fitted with the first applied (not on the base)."""
    first = make_edit(sd, make_change(sd, "dense", target=f"{ATTN}.to_v.weight", seed=3))
    request = EditRequest(concepts=("cat",))
    stacked = fit_on_top(sd, first, "uce", {}, request, seed=0)
    with applied(sd, first):
        second = fit(sd, "uce", request, make_config("uce"), seed=0, progress=False)
        with applied(sd, second):
            expected = unet_output(sd)
    on_base = fit(sd, "uce", request, make_config("uce"), seed=0, progress=False)
    with applied(sd, stacked):
        assert torch.equal(unet_output(sd), expected)
    with applied(sd, first, on_base):  # fitted on the base instead: another edit
        assert not torch.equal(unet_output(sd), expected)
