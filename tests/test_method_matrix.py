"""The generic matrix (DESIGN.md): every registered method, on the tiny SD-1.x pipeline and on ShapesSD."""

import numpy as np
import pytest
import torch

import concept_edit
from concept_edit import (
    Edit,
    EditError,
    EditRequest,
    applied,
    apply,
    available_methods,
    get_method,
    make_config,
    revert,
)
from concept_edit.generation import generate, to_array
from concept_edit.methods import MODES

# What each method is asked to do in the matrix. A new method must add its entry here.
EXAMPLES = {
    "uce": {"sd": EditRequest(concepts=("cat",), guide="art"), "shapes": EditRequest(concepts=("circle",))},
    "rece": {"sd": EditRequest(concepts=("cat",), guide="art"), "shapes": EditRequest(concepts=("circle",))},
    "esd": {"sd": EditRequest(concepts=("cat",)), "shapes": EditRequest(concepts=("circle",))},
    "eigen": {"sd": EditRequest(concepts=("cat",)), "shapes": EditRequest(concepts=("circle",))},
    "cad": {"sd": EditRequest(concepts=("cat",)), "shapes": EditRequest(concepts=("circle",))},
    "amnesia": {"sd": EditRequest(concepts=("cat",), preserve=("a dog",)), "shapes": EditRequest(concepts=("circle",))},
    "advunlearn": {"sd": EditRequest(concepts=("cat",), preserve=("a dog",)),
                   "shapes": EditRequest(concepts=("circle",))},  # fmt: skip
}
# Options that keep a trained method's matrix run short (a few steps, with a step size that shows in the output).
OPTIONS = {
    "esd": {"iterations": 3, "sampling_steps": 3, "lr": 3e-3},
    "advunlearn": {"iterations": 3, "warmup": 1, "attack_steps": 2, "sampling_steps": 3, "lr": 3e-3},
    "eigen": {"samples": 2, "steps": 3},
    "cad": {"samples": 1, "steps": 3},
    "amnesia": {
        "steps": 2,
        "lr": 3e-3,
        "batch_size": 2,
        "fisher_samples": 1,
        "fisher_timesteps": 3,
        "replay_samples": 2,
        "surrogate_samples": 2,
        "sampling_steps": 2,
        "surrogate": "uniform",  # required on text-to-image models
    },
}


def fit(pipe, method, request, seed=0):
    config = make_config(method, **OPTIONS.get(method, {}))
    return concept_edit.fit(pipe, method, request, config, seed=seed, progress=False)


PROMPTS = {"sd": "a photo of a cat", "shapes": "a red circle on a striped background"}


def test_every_registered_method_is_in_the_matrix():
    assert set(available_methods()) <= set(EXAMPLES)


def render(pipe, prompt):
    return to_array(generate(pipe, [prompt, prompt], [0, 1], steps=3)).astype(np.float32) / 255


@pytest.fixture(params=["sd", "shapes"])
def model(request):
    return request.param, request.getfixturevalue(request.param)


@pytest.mark.parametrize("method", available_methods())
def test_fit_apply_changes_output_and_revert_restores_it_exactly(method, model):
    name, pipe = model
    before = render(pipe, PROMPTS[name])
    edit = fit(pipe, method, EXAMPLES[method][name], seed=0)
    np.testing.assert_array_equal(render(pipe, PROMPTS[name]), before)  # fit leaves the pipeline unchanged
    apply(pipe, edit)
    assert np.abs(render(pipe, PROMPTS[name]) - before).max() > 1e-3
    revert(pipe)
    np.testing.assert_array_equal(render(pipe, PROMPTS[name]), before)


@pytest.mark.parametrize("method", available_methods())
def test_saved_edit_gives_the_same_output_as_in_memory(method, model, tmp_path):
    name, pipe = model
    edit = fit(pipe, method, EXAMPLES[method][name], seed=0)
    with applied(pipe, edit):
        in_memory = render(pipe, PROMPTS[name])
    with applied(pipe, Edit.load(edit.save(tmp_path / "e"))):
        np.testing.assert_array_equal(render(pipe, PROMPTS[name]), in_memory)


@pytest.mark.parametrize("method", available_methods())
def test_edit_is_refused_by_a_different_base(method, sd, other_sd):
    edit = fit(sd, method, EXAMPLES[method]["sd"], seed=0)
    with pytest.raises(EditError):
        apply(other_sd, edit)


@pytest.mark.parametrize("method", available_methods())
def test_same_seed_same_edit(method, model):
    name, pipe = model
    a = fit(pipe, method, EXAMPLES[method][name], seed=7)
    b = fit(pipe, method, EXAMPLES[method][name], seed=7)
    assert a.manifest == b.manifest and a.manifest["seed"] == 7  # the manifest records the seed
    for x, y in zip(a.changes(), b.changes(), strict=True):
        assert x.info() == y.info()
        for part, tensor in x.parts().items():
            assert torch.equal(tensor, y.parts()[part])


@pytest.mark.parametrize("method", available_methods())
def test_bad_requests_raise_one_clear_value_error(method, sd, tmp_path):
    with pytest.raises(ValueError, match="empty concept"):
        concept_edit.fit(sd, method, EditRequest(concepts=("  ",)))
    with pytest.raises(ValueError, match="unknown option"):
        make_config(method, no_such_option=1)
    with pytest.raises(ValueError, match="unknown method"):
        concept_edit.fit(sd, method + "-nope", EXAMPLES[method]["sd"])
    unsupported = [m for m in MODES if m not in get_method(method).modes and m != "debias"]
    for mode in unsupported:
        with pytest.raises(ValueError, match="does not support mode"):
            concept_edit.fit(sd, method, EditRequest(concepts=("cat",), mode=mode))
    with pytest.raises(ValueError, match="takes a"):
        concept_edit.fit(sd, method, EXAMPLES[method]["sd"], config=object())
    assert list(tmp_path.iterdir()) == []  # nothing written
