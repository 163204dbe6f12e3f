"""Eigen-direction erasure: statistics, erasers, folding, the pipeline method, attention maps."""

import numpy as np
import pytest
import torch
from torch import nn

from concept_edit import Edit, EditRequest, applied, fit, make_config
from concept_edit.cli.app import main
from concept_edit.edit.changes import ActivationProjection, EditError
from concept_edit.edit.file import get_module
from concept_edit.eigen import ActivationStatistics, erased, fold, leace_eraser, recording, svd_eraser, top_directions
from concept_edit.generation import generate, to_array


def _data(seed=0, n=600):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 0.8).long()
    return x, y


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 12))


def _stats(model, x, y, layer="2", batches=3, **kw):
    stats = ActivationStatistics([layer], [0, 1, 2], **kw)
    with torch.no_grad(), recording(stats, model) as rec:
        for xb, yb in zip(x.chunk(batches), y.chunk(batches), strict=True):
            rec.labels = yb
            model(xb)
    return stats


@pytest.mark.parametrize("centre", [False, True])
def test_streaming_statistics_give_the_batch_svd_directions(centre):
    model, (x, y) = _model(), _data()
    stats = _stats(model, x, y)
    with torch.no_grad():
        a = model(x).double()[y == 1]
    if centre:
        a = a - a.mean(0)
    u = torch.linalg.svd(a.T, full_matrices=False)[0][:, :3]  # eq. 4 on the stacked activations
    found = top_directions(stats, "2", 1, 3, centre=centre)
    overlap = (found @ u).abs()
    assert torch.allclose(overlap, torch.eye(3, dtype=overlap.dtype), atol=1e-6)


def test_conv_maps_are_one_feature_vector_each():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1))
    x, y = torch.randn(40, 1, 4, 4), torch.arange(40) % 2
    stats = ActivationStatistics(["0"], [0, 1], feature_dims=3)
    with torch.no_grad(), recording(stats, model) as rec:
        rec.labels = y
        out = model(x)
    flat = out.reshape(40, -1).double()[y == 0]
    u = torch.linalg.svd(flat.T, full_matrices=False)[0][:, 0]
    assert stats.samples("0", 0) == 20
    assert abs(float(top_directions(stats, "0", 0, 1)[0] @ u)) == pytest.approx(1.0, abs=1e-6)


def test_centred_erasure_projects_around_the_class_mean():
    model, (x, y) = _model(), _data()
    stats = _stats(model, x, y)
    change = svd_eraser(stats, "2", 1, k=2, centre=True)
    with torch.no_grad():
        plain = model(x)
        with erased(model, [change]):
            edited = model(x)
    mean = plain[y == 1].mean(0)
    v = change.directions
    assert torch.allclose(change.bias, mean, atol=1e-5)
    assert torch.allclose(edited, plain - ((plain - mean) @ v.T) @ v, atol=1e-5)
    assert ((edited[y == 1] - mean) @ v.T).abs().max() < 1e-4


def test_several_classes_remove_the_span_of_all_their_directions():
    model, (x, y) = _model(), _data()
    stats = _stats(model, x, y)
    both = svd_eraser(stats, "2", [0, 2], k=2)
    each = torch.cat([top_directions(stats, "2", c, 2) for c in (0, 2)]).float()
    assert both.rank == 4
    assert torch.allclose(both.directions @ both.directions.T, torch.eye(4), atol=1e-5)
    assert torch.allclose(each @ both.directions.T @ both.directions, each, atol=1e-5)  # every direction inside


def test_hook_removes_exactly_the_stored_directions():
    model, (x, y) = _model(), _data()
    change = svd_eraser(_stats(model, x, y), "2", 2, k=2)
    with torch.no_grad():
        plain = model(x)
        with erased(model, [change]):
            edited = model(x)
    v = change.directions
    assert (edited @ v.T).abs().max() < 1e-5  # nothing left along the directions
    assert torch.allclose(edited, plain - (plain @ v.T) @ v, atol=1e-5)  # and nothing orthogonal to them moved
    assert (plain @ v.T).abs().max() > 0.1  # the test would notice a hook that did nothing
    assert not model[2]._forward_hooks  # removed after the block


def test_leace_leaves_no_linear_signal_and_matches_the_library():
    from concept_erasure import LeaceFitter
    from sklearn.linear_model import LogisticRegression

    model, (x, y) = _model(), _data()
    change = leace_eraser(_stats(model, x, y), "2", 1)
    with torch.no_grad():
        plain = model(x)
        with erased(model, [change]):
            edited = model(x)
    z = (y == 1).numpy()
    chance = max(z.mean(), 1 - z.mean())
    before = LogisticRegression(max_iter=5000).fit(plain.numpy(), z).score(plain.numpy(), z)
    after = LogisticRegression(max_iter=5000).fit(edited.numpy(), z).score(edited.numpy(), z)
    assert before > chance + 0.15
    assert after <= chance + 0.02
    # the same eraser as the library's own fitter fed the raw rows (our moments -> its fields)
    reference = LeaceFitter.fit(plain.double(), torch.as_tensor(z, dtype=torch.float64)[:, None]).eraser
    assert torch.allclose(edited.double(), reference(plain.double()), atol=1e-5)


@pytest.mark.parametrize("eraser", ["svd", "leace"])
def test_fold_gives_the_hooks_outputs(eraser):
    model, (x, y) = _model(), _data()
    stats = _stats(model, x, y)
    change = svd_eraser(stats, "2", 0, 2) if eraser == "svd" else leace_eraser(stats, "2", [0, 2])
    with torch.no_grad(), erased(model, [change]):
        hooked = model(x)
    with torch.no_grad():
        for delta in fold(change, model[2]):
            getattr(model[2], delta.target.rsplit(".", 1)[1]).add_(delta.delta)
        folded = model(x)
    assert torch.allclose(folded, hooked, atol=1e-5)


def test_bad_input_is_refused_and_installs_nothing():
    model, (x, y) = _model(), _data()
    stats = _stats(model, x, y)
    with pytest.raises(ValueError, match="no module at 'nope'"), recording(ActivationStatistics(["nope"], [0]), model):
        pass
    with pytest.raises(ValueError, match="larger than the 12 features"):
        svd_eraser(stats, "2", 0, k=13)
    few = ActivationStatistics(["2"], [0, 1])
    with torch.no_grad(), recording(few, model) as rec:
        rec.labels = 0
        model(x[:2])
    with pytest.raises(ValueError, match="too few"):
        svd_eraser(few, "2", 0, k=3)
    with pytest.raises(ValueError, match="no samples"):
        svd_eraser(few, "2", 1)
    with pytest.raises(ValueError, match="other classes"):
        leace_eraser(few, "2", 0)
    with pytest.raises(ValueError, match="class indices 0..1"), recording(few, model) as rec:
        rec.labels = torch.tensor([0, 2])
        model(x[:2])
    with pytest.raises(ValueError, match="class indices"), recording(few, model) as rec:
        rec.labels = -1
        model(x[:2])
    assert few.samples("2", 0) == 2  # the refused batches added nothing
    conv = nn.Conv2d(1, 2, 3)
    with pytest.raises(EditError, match="only the output of an nn.Linear"):
        fold(ActivationProjection.of("c", torch.ones(1, 2)), conv)
    affine = ActivationProjection("l", torch.ones(1, 3) / 3**0.5, back=torch.ones(1, 3), bias=torch.ones(3))
    with pytest.raises(EditError, match="no bias to absorb"):
        fold(affine, nn.Linear(2, 3, bias=False))
    good = svd_eraser(stats, "2", 0)
    bad = ActivationProjection.of("0.nope", torch.ones(1, 12))
    with pytest.raises(ValueError, match="no module"), erased(model, [good, bad]):
        pass
    assert not model[2]._forward_hooks


def test_affine_activation_change_survives_a_file(tmp_path, sd):
    from concept_edit.models.targets import cross_attention_layers

    layer = cross_attention_layers(sd)[0].path + ".to_out.0"
    dim = get_module(sd, layer).out_features
    gen = torch.Generator().manual_seed(0)
    change = ActivationProjection(
        layer, torch.randn(2, dim, generator=gen), back=torch.randn(2, dim, generator=gen) * 0.1,
        bias=torch.randn(dim, generator=gen),
    )  # fmt: skip
    edit = Edit.create(sd, [change], method="test", config={}, request={}, seed=None)
    loaded = Edit.load(edit.save(tmp_path / "e.safetensors"))
    with applied(sd, edit):
        a = to_array(generate(sd, ["a cat"], [0], steps=2))
    with applied(sd, loaded):
        b = to_array(generate(sd, ["a cat"], [0], steps=2))
    base = to_array(generate(sd, ["a cat"], [0], steps=2))
    assert np.array_equal(a, b) and not np.array_equal(a, base)
    info = change.info()
    info["oblique"] = "yes"
    with pytest.raises(EditError, match="'oblique' must be true or false"):
        ActivationProjection.expected_parts(info)


def test_eigen_on_a_pipeline_fold_equals_hooks_and_touches_only_the_chosen_layers(sd):
    request = EditRequest(concepts=("cat",))
    hooked = fit(sd, "eigen", request, make_config("eigen", layers=("0", "2"), samples=2, steps=2), progress=False)
    folded = fit(sd, "eigen", request, make_config("eigen", layers=("0", "2"), samples=2, steps=2, fold=True),
                 progress=False)  # fmt: skip
    assert [c.kind for c in hooked.entries] == ["activation"] * 2
    assert {c.target.rsplit(".", 1)[0] for c in folded.entries} == {c.target for c in hooked.entries}
    with applied(sd, hooked):
        a = to_array(generate(sd, ["a photo of a cat"], [1], steps=2))
    with applied(sd, folded):
        b = to_array(generate(sd, ["a photo of a cat"], [1], steps=2))
    base = to_array(generate(sd, ["a photo of a cat"], [1], steps=2))
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # float rounding of the folded weights only
    assert np.abs(a.astype(int) - base.astype(int)).max() > 5  # and the edit does change the image


def test_leace_without_its_package_is_refused_before_any_work(sd, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "concept_erasure" else real(name, *a)
    )
    calls = []
    monkeypatch.setattr("concept_edit.methods.eigen.fit.record_prompts", lambda *a, **k: calls.append(a))
    with pytest.raises(ValueError, match=r"concept-edit\[eigen\]"):
        fit(sd, "eigen", EditRequest(concepts=("cat",)), make_config("eigen", eraser="leace"), progress=False)
    assert not calls


def test_eigen_bad_requests(sd):
    with pytest.raises(ValueError, match="cross-attention layers"):
        fit(sd, "eigen", EditRequest(concepts=("cat",)), make_config("eigen", layers=("99",)), progress=False)
    with pytest.raises(ValueError, match="listed twice"):
        make_config("eigen", layers=("1", "1"))
    with pytest.raises(ValueError, match="eraser must be one of"):
        make_config("eigen", eraser="pca")
    with pytest.raises(ValueError, match="use leace"):
        fit(sd, "eigen", EditRequest(concepts=("cat",), preserve=("dog",)), make_config("eigen"), progress=False)
    with pytest.raises(ValueError, match="more than the"):
        fit(sd, "eigen", EditRequest(concepts=("cat",)), make_config("eigen", k=10**4), progress=False)
    with pytest.raises(ValueError, match="LEACE always works around the mean"):
        make_config("eigen", eraser="leace", centre=True)
    with pytest.raises(ValueError, match="no cross-attention layer 'unet.nope'"):
        fit(sd, "eigen", EditRequest(concepts=("cat",)), make_config("eigen", layers=("unet.nope",)), progress=False)


def test_attention_maps_and_the_cli(sd_folder, tmp_path, capsys):
    out = tmp_path / "maps.png"
    code = main(["attention", "--model", str(sd_folder), "--prompt", "a photo of a cat", "--token", "cat",
                 "--steps", "2", "--out", str(out)])  # fmt: skip
    assert code == 0 and out.stat().st_size > 0
    assert main(["attention", "--model", str(sd_folder), "--prompt", "a photo", "--token", "cat", "--steps", "2",
                 "--out", str(tmp_path / "x.png")]) == 2  # fmt: skip
    assert "does not occur" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
    edit = tmp_path / "edit"
    code = main(["edit", "eigen", "--model", str(sd_folder), "--concept", "cat", "--layers", "0", "--samples", "2",
                 "--steps", "2", "--fold", "--out", str(edit)])  # fmt: skip
    assert code == 0
    assert {e.kind for e in Edit.load(edit / "edit.safetensors").entries} == {"dense"}
    folder = tmp_path / "exported"  # a folded edit bakes into a plain diffusers folder
    assert main(["export", "--model", str(sd_folder), "--edit", str(edit), "--out", str(folder)]) == 0
    hooked = tmp_path / "hooked"
    assert main(["edit", "eigen", "--model", str(sd_folder), "--concept", "cat", "--layers", "0", "--samples", "2",
                 "--steps", "2", "--out", str(hooked)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["export", "--model", str(sd_folder), "--edit", str(hooked), "--out", str(tmp_path / "x")]) == 2
    assert "--fold" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_attention_maps_are_distributions_over_the_image(sd):
    from concept_edit.attention_maps import attention_maps
    from concept_edit.models.targets import cross_attention_layers

    maps, image = attention_maps(sd, "a photo of a cat", "cat", steps=3, guidance=7.5)
    assert len(maps) == len(cross_attention_layers(sd))
    for layer in maps:
        assert layer.shape[0] == 3 and layer.shape[1] == layer.shape[2]
        assert (layer >= 0).all() and (layer <= 1 + 1e-6).all()
    assert image.ndim == 3
    # the first step sees the same latents with or without guidance: the maps read must be the prompt's half
    unguided, _ = attention_maps(sd, "a photo of a cat", "cat", steps=3, guidance=1.0)
    for guided_layer, plain_layer in zip(maps, unguided, strict=True):
        assert np.allclose(guided_layer[0], plain_layer[0], atol=1e-5)
    for layer in cross_attention_layers(sd):
        module = get_module(sd, layer.path)
        assert type(module.processor).__name__ != "AttnProcessor" and "get_attention_scores" not in module.__dict__


def test_eigen_and_attention_maps_on_sdxl(sdxl):
    from concept_edit.attention_maps import attention_maps

    edit = fit(sdxl, "eigen", EditRequest(concepts=("cat",)), make_config("eigen", k=1, samples=1, steps=2),
               progress=False)  # fmt: skip
    base = to_array(generate(sdxl, ["a photo of a cat"], [0], steps=2))
    with applied(sdxl, edit):
        after = to_array(generate(sdxl, ["a photo of a cat"], [0], steps=2))
    assert not np.array_equal(base, after)
    maps, _ = attention_maps(sdxl, "a photo of a cat", "cat", steps=2)
    assert all(np.isfinite(layer).all() and layer.shape[0] == 2 for layer in maps)
