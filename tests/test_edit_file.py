"""The edit file: small, portable, refused where it does not belong, applied all-or-nothing, reverted exactly."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from concept_edit import Edit, EditError, EditRequest, LowRankDelta, applied, apply, compose, fit, revert
from concept_edit.edit import applied_edits
from concept_edit.methods.uce.fit import target_weights
from concept_edit.models.targets import get_parameter


def state(pipe):
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


def assert_same_state(pipe, reference):
    current = pipe.unet.state_dict()
    for key, value in reference.items():
        assert torch.equal(current[key], value), key


@pytest.fixture
def cat_edit(sd):
    return fit(sd, "uce", EditRequest(concepts=("cat",), guide="art"), seed=3)


def test_only_edited_tensors_are_stored_low_rank(sd, cat_edit, tmp_path):
    path = cat_edit.save(tmp_path / "no-cat")
    assert path == tmp_path / "no-cat" / "edit.safetensors"
    assert set(cat_edit.targets) == set(target_weights(sd, edit_keys=True))  # K and V of every cross-attn layer
    assert all(c.kind == "low_rank" and c.rank == 1 for c in cat_edit.changes())  # one concept, last token
    full = sum(p.numel() * p.element_size() for p in sd.unet.parameters())
    assert path.stat().st_size < full / 20
    manifest = Edit.load(path).manifest
    for key in ("method", "config", "concepts", "seed", "base_model", "base_hash", "library_version"):
        assert key in manifest
    assert manifest["concepts"] == ["cat"] and manifest["seed"] == 3 and manifest["method"] == "uce"


def test_save_load_roundtrip_and_single_file_path(cat_edit, tmp_path):
    path = cat_edit.save(tmp_path / "cat.safetensors")
    loaded = Edit.load(path)
    assert loaded.manifest == cat_edit.manifest
    for key in cat_edit.targets:
        assert torch.equal(loaded.weight_delta(key), cat_edit.weight_delta(key))


def test_revert_is_exact_and_edits_stack_in_order(sd, cat_edit):
    original = state(sd)
    dog_edit = fit(sd, "uce", EditRequest(concepts=("dog",)))
    apply(sd, cat_edit, dog_edit)
    assert applied_edits(sd) == ["uce(cat)", "uce(dog)"]
    revert(sd, 1)
    with applied(sd, dog_edit):
        pass
    revert(sd)
    assert applied_edits(sd) == []
    assert_same_state(sd, original)


def test_sequential_edit_made_on_an_edited_model_applies_after_its_base(sd, cat_edit):
    original = state(sd)
    with applied(sd, cat_edit):
        second = fit(sd, "uce", EditRequest(concepts=("dog",)))
    with pytest.raises(EditError, match="on top of another edit that is not applied"):
        apply(sd, second)  # its base is the cat-edited model
    apply(sd, cat_edit, second)
    revert(sd)
    assert_same_state(sd, original)


def test_compose_merges_into_one_equivalent_edit(sd, cat_edit, tmp_path):
    dog_edit = fit(sd, "uce", EditRequest(concepts=("dog",)))
    merged = compose(sd, cat_edit, dog_edit)
    assert merged.manifest["concepts"] == ["cat", "dog"]
    assert all(c.kind == "low_rank" and c.rank == 2 for c in merged.changes())
    with applied(sd, cat_edit, dog_edit):
        sequential = {k: p.detach().clone() for k, p in target_weights(sd, True).items()}
    with applied(sd, Edit.load(merged.save(tmp_path / "both"))):
        for key, p in target_weights(sd, True).items():
            torch.testing.assert_close(p.detach(), sequential[key], rtol=1e-6, atol=1e-6)


def test_wrong_base_is_refused_and_nothing_changes(other_sd, cat_edit):
    original = state(other_sd)
    with pytest.raises(EditError, match="weights differ"):  # both are named 'StableDiffusionPipeline'
        apply(other_sd, cat_edit)
    assert_same_state(other_sd, original)
    assert applied_edits(other_sd) == []


def test_all_or_nothing_when_a_later_edit_is_refused(sd, other_sd, cat_edit):
    original = state(sd)
    foreign = fit(other_sd, "uce", EditRequest(concepts=("dog",)))
    with pytest.raises(EditError):
        apply(sd, cat_edit, foreign)
    assert_same_state(sd, original)
    assert applied_edits(sd) == []


def test_edit_for_another_architecture_is_refused(sdxl, cat_edit):
    with pytest.raises(EditError, match="does not have|shape"):
        apply(sdxl, cat_edit)


def test_float16_load_of_the_same_model_accepts_and_applies_the_edit(sd, cat_edit):
    half = sd.to(torch.float16)
    key = cat_edit.targets[0]
    expected = (get_parameter(half, key).detach().float() + cat_edit.weight_delta(key)).half()
    with applied(half, cat_edit):
        assert torch.equal(get_parameter(half, key).detach(), expected)


def test_truncated_and_foreign_files_are_refused(cat_edit, tmp_path):
    path = cat_edit.save(tmp_path / "good.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(EditError, match="not a readable edit"):
        Edit.load(tmp_path / "cut.safetensors")
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(EditError, match="no manifest"):
        Edit.load(tmp_path / "foreign.safetensors")
    (tmp_path / "junk.safetensors").write_text("not a tensor file")
    with pytest.raises(EditError):
        Edit.load(tmp_path / "junk.safetensors")
    with pytest.raises(EditError, match="no edit at"):
        Edit.load(tmp_path / "missing")


def test_tampered_tensor_is_detected_and_nothing_is_applied(sd, cat_edit, tmp_path):
    path = cat_edit.save(tmp_path / "good.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    key = sorted(tensors)[-1]  # the last change: earlier ones are applied before the bad one is read
    tensors[key] = tensors[key] + 1
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    bad = Edit.load(tmp_path / "bad.safetensors")  # the header is fine: the data is checked when applied
    original = state(sd)
    with pytest.raises(EditError, match="checksum"):
        apply(sd, bad)
    assert_same_state(sd, original)
    assert applied_edits(sd) == []


def test_output_path_that_is_a_file_is_refused(cat_edit, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(EditError, match="is a file"):
        cat_edit.save(blocker)
    assert blocker.read_text() == "x"


def test_low_rank_keeps_factors_only_when_smaller():
    assert LowRankDelta.compact("w", torch.ones(100, 2), torch.ones(2, 80), (100, 80)).kind == "low_rank"
    assert LowRankDelta.compact("w", torch.ones(10, 9), torch.ones(9, 8), (10, 8)).kind == "dense"
