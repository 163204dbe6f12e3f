"""ESD: the training target is the paper's formula, only the chosen parameters train, resume is exact."""

import os
import signal

import pytest
import torch

from concept_edit import EditRequest, applied, fit, make_config, make_inputs
from concept_edit.edit import trainable
from concept_edit.methods import esd
from concept_edit.models.conditioning import encode_conditions, predict_noise
from concept_edit.training import Interrupted

FAST = {"iterations": 2, "pool_trajectories": 2, "sampling_steps": 3, "refresh_every": 1, "lr": 1e-2}


def config(**options):
    return make_config("esd", **{**FAST, **options})


def direct(pipe, x, t, prompt):
    """The original UNet's prediction, called the plain way."""
    with torch.no_grad():
        return predict_noise(pipe.unet, x, t, encode_conditions(pipe, [prompt] * len(x)))


def trainer_for(pipe, request, cfg, keys, **kw):
    tuned_cm = trainable(pipe, keys, **kw)
    tuned = tuned_cm.__enter__()
    lora = kw.get("kind") == "low_rank"
    return tuned_cm, tuned, esd._Trainer(pipe, request, cfg, pipe.unet, esd._frozen_view(pipe.unet, tuned, lora))


@pytest.mark.parametrize("anchor", [None, "dog"])
@pytest.mark.parametrize("eta", [1.0, 0.0, 2.5])
def test_pool_targets_are_the_esd_formula_evaluated_directly(sd, anchor, eta):
    request = EditRequest(concepts=("cat",), guide=anchor)
    cfg = config(eta=eta, pool_trajectories=3, sampling_steps=4)
    cm, _, trainer = trainer_for(sd, request, cfg, esd.variant_parameters(sd, "x"))
    pool = trainer.sample_pool(seed=0, refresh=0)
    cm.__exit__(None, None, None)
    assert len(pool.latents) == 3 * 4 and sorted(set(pool.timesteps.tolist())) == sorted(trainer.timesteps.tolist())
    base = direct(sd, pool.latents, pool.timesteps, anchor or "")
    concept = direct(sd, pool.latents, pool.timesteps, "cat")
    expected = base - eta * (concept - base)
    torch.testing.assert_close(pool.targets, expected, atol=1e-5, rtol=1e-4)
    if eta == 0 and anchor is None:  # the eigen paper's eq. 11: the concept is taught the unconditional output
        torch.testing.assert_close(pool.targets, direct(sd, pool.latents, pool.timesteps, ""), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["dense", "low_rank"])
def test_frozen_view_gives_the_original_model_after_the_weights_moved(sd, kind):
    request = EditRequest(concepts=("cat",))
    cfg = config(sampler="trained")
    keys = esd.variant_parameters(sd, "all", weights_only=kind == "low_rank")
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([500, 20])
    original = direct(sd, x, t, "cat")
    torch.manual_seed(0)
    cm, tuned, trainer = trainer_for(sd, request, cfg, keys, kind=kind, rank=2)
    with torch.no_grad():
        for p in tuned.parameters:
            p.add_(0.05 * torch.randn_like(p))  # training moved every trained tensor (LoRA: A and B)
    concept = torch.zeros(2, dtype=torch.long)
    moved = trainer.eps(x, t, trainer._rows(concept, "concept"), frozen=False)
    frozen = trainer.eps(x, t, trainer._rows(concept, "concept"), frozen=True)
    cm.__exit__(None, None, None)
    assert (moved - original).abs().max() > 1e-3
    torch.testing.assert_close(frozen, original, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("variant", "inside"),
    [
        ("x", lambda k: ".attn2." in k),
        ("kv", lambda k: k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))),
        ("u", lambda k: ".attn2." not in k),
        ("all", lambda k: True),
    ],
)
def test_two_iterations_change_only_the_chosen_parameter_group(sd, variant, inside):
    edit = fit(sd, "esd", EditRequest(concepts=("cat",)), config(variant=variant), seed=0, progress=False)
    keys = [c.target for c in edit.changes()]
    chosen = esd.variant_parameters(sd, variant)
    assert keys and set(keys) <= set(chosen)
    assert all(inside(k) for k in keys)
    assert not any("norm" in k for k in keys)  # norm layers never train (official module selection)
    if variant == "u":
        assert any("conv_in" in k or "resnets" in k for k in keys)


def test_lora_stores_low_rank_factors_of_the_chosen_weights(sd):
    torch.manual_seed(0)
    edit = fit(sd, "esd", EditRequest(concepts=("cat",)), config(lora_rank=2), seed=0, progress=False)
    assert set(edit.kinds) == {"low_rank"}
    assert all(".attn2." in c.target and c.target.endswith(".weight") for c in edit.changes())
    assert all(c.up.shape[1] <= 2 for c in edit.changes())


def test_several_concepts_train_in_one_run(sd):
    request = EditRequest(concepts=("cat", "dog"), guides=("a", "photo"))
    cm, _, trainer = trainer_for(sd, request, config(pool_trajectories=4), esd.variant_parameters(sd, "kv"))
    pool = trainer.sample_pool(seed=0, refresh=0)
    cm.__exit__(None, None, None)
    assert set(pool.concepts.tolist()) == {0, 1}
    dog = pool.concepts == 1
    x, t = pool.latents[dog], pool.timesteps[dog]
    base, concept = direct(sd, x, t, "photo"), direct(sd, x, t, "dog")
    torch.testing.assert_close(pool.targets[dog], base - (concept - base), atol=1e-5, rtol=1e-4)
    edit = fit(sd, "esd", request, config(variant="kv"), seed=0, progress=False)
    assert edit.manifest["request"]["concepts"] == ["cat", "dog"]


@pytest.mark.parametrize(("sampler", "pool"), [("frozen", 2), ("trained", 2), ("frozen", 0)])
def test_resume_after_ctrl_c_equals_an_uninterrupted_run(sd, tmp_path, monkeypatch, sampler, pool):
    request = EditRequest(concepts=("cat",))
    cfg = config(iterations=5, refresh_every=3, sampler=sampler, pool_trajectories=pool, batch_size=2)
    whole = fit(sd, "esd", request, cfg, seed=3, progress=False)

    ckpt = tmp_path / "run.ckpt"
    calls = {"n": 0}
    real_loss = esd._Trainer.loss

    def loss_then_ctrl_c(self, batch):
        calls["n"] += 1
        if calls["n"] == 4:  # during iteration 4 (pool refreshed at 3, so it must be restored)
            os.kill(os.getpid(), signal.SIGINT)
        return real_loss(self, batch)

    monkeypatch.setattr(esd._Trainer, "loss", loss_then_ctrl_c)
    inputs = make_inputs("esd", checkpoint=ckpt, checkpoint_every=100)
    with pytest.raises(Interrupted):
        fit(sd, "esd", request, cfg, inputs, seed=3, progress=False)
    assert ckpt.exists()
    monkeypatch.setattr(esd._Trainer, "loss", real_loss)
    resumed = fit(sd, "esd", request, cfg, make_inputs("esd", checkpoint=ckpt, resume=True), seed=3, progress=False)
    for a, b in zip(whole.changes(), resumed.changes(), strict=True):
        assert a.target == b.target
        torch.testing.assert_close(a.delta, b.delta, atol=0, rtol=0)
    with pytest.raises(ValueError, match="different configuration"):
        fit(sd, "esd", request, config(iterations=5, lr=0.5), make_inputs("esd", checkpoint=ckpt, resume=True), seed=3)


def test_a_finished_run_resumed_with_more_iterations_equals_the_longer_run(sd, tmp_path):
    request, ckpt = EditRequest(concepts=("cat",)), tmp_path / "run.ckpt"
    longer = fit(sd, "esd", request, config(iterations=4, refresh_every=3), seed=1, progress=False)
    fit(sd, "esd", request, config(iterations=2, refresh_every=3), make_inputs("esd", checkpoint=ckpt), seed=1)
    inputs = make_inputs("esd", checkpoint=ckpt, resume=True)
    extended = fit(sd, "esd", request, config(iterations=4, refresh_every=3), inputs, seed=1, progress=False)
    for a, b in zip(longer.changes(), extended.changes(), strict=True):
        torch.testing.assert_close(a.delta, b.delta, atol=0, rtol=0)
    with pytest.raises(ValueError, match="past --iterations"):
        fit(sd, "esd", request, config(iterations=3, refresh_every=3), inputs, seed=1)


def test_sdxl_trains(sdxl):
    edit = fit(sdxl, "esd", EditRequest(concepts=("cat",)), config(variant="kv"), seed=0, progress=False)
    assert edit.changes()
    with applied(sdxl, edit):
        pass


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: config(eta=-1), "eta"),
        (lambda: config(iterations=0), "iterations"),
        (lambda: config(variant="q"), "variant must be one of"),
        (lambda: config(sampler="other"), "sampler must be one of"),
        (lambda: config(lora_rank=-1), "lora_rank"),
    ],
)
def test_bad_options_are_one_clear_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_requests_write_nothing(sd, tmp_path):
    ckpt = tmp_path / "c.ckpt"
    inputs = make_inputs("esd", checkpoint=ckpt)
    with pytest.raises(ValueError, match="is the concept being erased"):  # an anchor equal to the concept
        fit(sd, "esd", EditRequest(concepts=("cat",), guide="  CAT "), config(), inputs)
    with pytest.raises(ValueError, match="no preservation term"):
        fit(sd, "esd", EditRequest(concepts=("cat",), preserve=("dog",)), config(), inputs)
    with pytest.raises(ValueError, match="no checkpoint"):
        fit(sd, "esd", EditRequest(concepts=("cat",)), config(), make_inputs("esd", checkpoint=ckpt, resume=True))
    sd.unet.half()
    with pytest.raises(ValueError, match="float32 master weights"):
        fit(sd, "esd", EditRequest(concepts=("cat",)), config(), inputs)
    assert list(tmp_path.iterdir()) == []
