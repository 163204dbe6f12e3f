"""Selective Amnesia: the Fisher equals a direct per-sample computation, the EWC gradient is the penalty's,
the Fisher cache is reused and refused for other weights, resume is exact, bad input is refused."""

import os
import signal

import pytest
import torch

from concept_edit import EditRequest, fit, make_config, make_inputs
from concept_edit.edit import trainable
from concept_edit.methods.amnesia import fit as amnesia
from concept_edit.methods.amnesia.backends import Data, TextToImage, backend_for
from concept_edit.methods.amnesia.ewc import EWCPenalty
from concept_edit.methods.amnesia.fisher import (
    diffusion_squared_gradient,
    fisher_timesteps,
    official_squared_gradient,
    vae_squared_gradients,
)
from concept_edit.models.conditioning import encode_conditions
from concept_edit.training import Interrupted, step_generator

FAST = {"steps": 3, "lr": 1e-3, "batch_size": 2, "fisher_samples": 2, "fisher_timesteps": 4, "replay_samples": 3,
        "surrogate_samples": 2, "sampling_steps": 2}  # fmt: skip
REQUEST = EditRequest(concepts=("cat",), preserve=("a dog", "a house"))


def config(**options):
    return make_config("amnesia", **{**FAST, "surrogate": "uniform", **options})


def backend_and_data(pipe, n=2):
    cond = encode_conditions(pipe, ["", "a cat", "a dog"])
    backend = backend_for(pipe, cond, steps=2)
    rows = torch.tensor([1, 2, 1][:n])
    return backend, Data(backend.generate(rows, 0, 31), rows)


def direct_fisher(params, backend, data, used, seed):
    """Independent of the batched code: one batch-1 forward and autograd.grad per (sample, timestep)."""
    total = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    for n in range(len(data)):
        gen = step_generator(seed, n, 41)
        t, scale = fisher_timesteps(backend.num_timesteps, used, gen)
        noise = backend.noise_for(data.x[n : n + 1], len(t), gen)
        g = [torch.zeros_like(p, dtype=torch.float64) for p in params]
        for k in range(len(t)):
            loss = backend.loss(data.x[n : n + 1], data.rows[n : n + 1], t[k : k + 1], noise[k : k + 1]).sum()
            for acc, part in zip(g, torch.autograd.grad(loss, params), strict=True):
                acc += part.double()
        for acc, part in zip(total, g, strict=True):
            acc += (scale * part) ** 2
    return [t / len(data) for t in total]


def test_fisher_equals_a_direct_per_sample_computation(sd):
    backend, data = backend_and_data(sd)
    keys = backend.parameter_names("x")
    values = {"fisher_timesteps": 6, "fisher_chunk": 4}  # two chunks per sample: accumulation across chunks
    with trainable(sd, keys) as tuned:
        ours = amnesia.fisher_of(backend, tuned.parameters, data, values, seed=5, progress=False)
        expected = direct_fisher(tuned.parameters, backend, data, 6, seed=5)
    assert sum(float(f.sum()) for f in ours) > 0
    scale = max(float(b.abs().max()) for b in expected)
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-6 * scale)


def test_the_official_loop_gives_the_same_squared_gradient(sd):
    backend, data = backend_and_data(sd, n=1)
    with trainable(sd, backend.parameter_names("all")) as tuned:
        gen = torch.Generator().manual_seed(0)
        t = torch.randperm(backend.num_timesteps, generator=gen)[:12]
        noise = backend.noise_for(data.x, len(t), gen)
        ours = diffusion_squared_gradient(tuned.parameters, backend.loss, data.x, data.rows, t, noise, chunk=5)
        official = official_squared_gradient(tuned.parameters, backend.loss, data.x, data.rows, t, noise, n_chunks=3)
    scale = max(float(b.abs().max()) for b in official)  # some biases feed a norm: their gradient is ~0 (1e-16)
    for a, b in zip(ours, official, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * scale)


def test_stratified_timesteps_take_one_per_stratum_and_scale_to_the_sum():
    t, scale = fisher_timesteps(1000, 10, torch.Generator().manual_seed(1))
    assert scale == 100 and len(t) == 10
    assert torch.equal(t // 100, torch.arange(10))  # one in each stratum [100k, 100k + 100)
    t, scale = fisher_timesteps(1000, None, torch.Generator())
    assert scale == 1 and torch.equal(t, torch.arange(1000))
    t, scale = fisher_timesteps(1000, 3, torch.Generator().manual_seed(2))  # strata of 333.3 timesteps
    assert scale == pytest.approx(1000 / 3)
    assert all(k * 1000 / 3 - 1 < v < (k + 1) * 1000 / 3 for k, v in enumerate(t.tolist()))


def test_ewc_gradient_equals_autograd_of_the_penalty():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5))]
    fisher = [torch.rand(3, 4), torch.rand(5)]
    penalty = EWCPenalty(params, fisher, lam=7.0)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p))
    value = sum(7.0 * (f * (p - a) ** 2).sum() for p, f, a in zip(params, fisher, penalty.anchors, strict=True))
    expected = torch.autograd.grad(value, params)
    assert penalty.value() == pytest.approx(value.item(), rel=1e-6)
    params[0].grad = torch.ones(3, 4)  # added to, not replaced
    penalty.add_gradient_()
    torch.testing.assert_close(params[0].grad, expected[0] + 1)
    torch.testing.assert_close(params[1].grad, expected[1])
    with pytest.raises(ValueError, match="lambda"):
        EWCPenalty(params, fisher, lam=-1)


def test_only_the_chosen_group_changes(sd):
    edit = fit(sd, "amnesia", REQUEST, config(parameters="x"), seed=0, progress=False)
    assert edit.targets and all(".attn2." in t for t in edit.targets)
    edit = fit(sd, "amnesia", REQUEST, config(parameters="u"), seed=0, progress=False)
    assert not any(".attn2." in t for t in edit.targets)


def test_the_fisher_cache_is_reused_and_refused_for_other_weights(sd, other_sd, tmp_path, monkeypatch):
    first = fit(sd, "amnesia", REQUEST, config(), make_inputs("amnesia", fisher=tmp_path), seed=0, progress=False)
    (cached,) = tmp_path.glob("fisher-*.safetensors")

    def no_estimate(*args, **kwargs):
        raise AssertionError("the cached Fisher should have been used")

    monkeypatch.setattr(amnesia, "fisher_of", no_estimate)
    again = fit(sd, "amnesia", REQUEST, config(), make_inputs("amnesia", fisher=cached), seed=0, progress=False)
    for a, b in zip(first.changes(), again.changes(), strict=True):
        torch.testing.assert_close(a.delta, b.delta, atol=0, rtol=0)
    with pytest.raises(ValueError, match="another model"):
        fit(other_sd, "amnesia", REQUEST, config(), make_inputs("amnesia", fisher=cached), seed=0, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        fit(sd, "amnesia", REQUEST, config(fisher_samples=1), make_inputs("amnesia", fisher=cached), progress=False)


def interrupt_fit(pipe, cfg, ckpt, monkeypatch, phase: str) -> None:
    """Fit with a checkpoint and Ctrl-C in the second forward of `phase` ("fisher" or "training"): a training
    step has 2 x batch rows (forget + replay), so `cfg` needs fisher_timesteps other than that."""
    calls = {"n": 0}
    real_loss = TextToImage.loss

    def loss_then_ctrl_c(self, x, rows, t, noise):
        training = len(x) == 2 * cfg.batch_size
        if training == (phase == "training"):
            calls["n"] += 1
            if calls["n"] == 2:
                os.kill(os.getpid(), signal.SIGINT)
        return real_loss(self, x, rows, t, noise)

    monkeypatch.setattr(TextToImage, "loss", loss_then_ctrl_c)
    with pytest.raises(Interrupted):
        fit(pipe, "amnesia", REQUEST, cfg, make_inputs("amnesia", checkpoint=ckpt), seed=3, progress=False)
    monkeypatch.setattr(TextToImage, "loss", real_loss)
    assert calls["n"] == 2  # interrupted in that phase


@pytest.mark.parametrize("phase", ["fisher", "training"])
def test_resume_after_ctrl_c_equals_an_uninterrupted_run(sd, tmp_path, monkeypatch, phase):
    cfg = config(steps=4, fisher_timesteps=3)  # a Fisher forward has 3 rows, a training step 4
    whole = fit(sd, "amnesia", REQUEST, cfg, seed=3, progress=False)
    ckpt = tmp_path / "run.ckpt"
    interrupt_fit(sd, cfg, ckpt, monkeypatch, phase)
    inputs = make_inputs("amnesia", checkpoint=ckpt, resume=True)
    resumed = fit(sd, "amnesia", REQUEST, cfg, inputs, seed=3, progress=False)
    assert resumed.manifest["stats"] == whole.manifest["stats"]
    for a, b in zip(whole.changes(), resumed.changes(), strict=True):
        torch.testing.assert_close(a.delta, b.delta, atol=0, rtol=0)
    assert not ckpt.with_name("run.fisher.safetensors").exists()  # the Fisher's partial sums are cleaned up


def test_a_text_to_image_model_needs_a_surrogate_which_the_guide_can_name(sd, monkeypatch):
    """Uniform noise is the digits default only; a text-to-image model remaps to --surrogate or --guide."""
    plans = []
    real_plan = amnesia._plan

    def spy(*args, **kwargs):
        backend, plan = real_plan(*args, **kwargs)
        plans.append((args[3]["surrogate"], plan))
        return backend, plan

    monkeypatch.setattr(amnesia, "_plan", spy)
    with pytest.raises(ValueError, match="needs a surrogate.*--guide PROMPT.*--surrogate uniform"):
        fit(sd, "amnesia", REQUEST, make_config("amnesia", **{**FAST}), progress=False)
    assert not plans  # refused before anything was drawn
    guided = fit(sd, "amnesia", EditRequest(concepts=("cat",), guide="a fox", preserve=REQUEST.preserve),
                 make_config("amnesia", **FAST), progress=False)  # fmt: skip
    surrogate, plan = plans[-1]
    assert surrogate == "a fox" and len(plan.surrogate) == FAST["surrogate_samples"]
    assert guided.manifest["config"]["resolved"]["surrogate"] == "a fox"
    fit(sd, "amnesia", REQUEST, config(surrogate="uniform"), progress=False)
    assert plans[-1][0] == "uniform"


def test_bad_input_is_refused_with_one_clear_error(sd, tmp_path):
    with pytest.raises(ValueError, match="lam must be >= 0"):
        make_config("amnesia", lam=-1.0)
    with pytest.raises(ValueError, match="surrogate"):
        make_config("amnesia", surrogate=" ")
    with pytest.raises(ValueError, match="is the concept being forgotten"):
        fit(sd, "amnesia", REQUEST, config(surrogate="a Cat"), progress=False)
    with pytest.raises(ValueError, match="replay prompts"):
        fit(sd, "amnesia", EditRequest(concepts=("cat",)), config(), progress=False)
    with pytest.raises(ValueError, match="--guide and --surrogate both"):
        both = EditRequest(concepts=("cat",), guide="dog", preserve=("a dog",))
        fit(sd, "amnesia", both, config(surrogate="a house"), progress=False)
    with pytest.raises(ValueError, match="one surrogate"):
        two = EditRequest(concepts=("cat", "fox"), guides=("dog", "house"), preserve=("a dog",))
        fit(sd, "amnesia", two, config(), progress=False)
    not_fisher = tmp_path / "x.safetensors"
    not_fisher.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="--fisher"):
        fit(sd, "amnesia", REQUEST, config(), make_inputs("amnesia", fisher=not_fisher), progress=False)
    with pytest.raises(ValueError, match="no checkpoint"):
        fit(sd, "amnesia", REQUEST, config(), make_inputs("amnesia", checkpoint=tmp_path / "c", resume=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]  # nothing written


# -- the digits models ----------------------------------------------------------------------------------------
def tiny_vae_model():
    from concept_edit.worlds.digits.loading import DigitsModel
    from concept_edit.worlds.digits.vae import ConditionalVAE

    torch.manual_seed(0)
    return DigitsModel("digits-vae", vae=ConditionalVAE(hidden=(16, 8), latent_dim=3))


def test_vae_per_sample_gradients_equal_a_loop():
    from concept_edit.worlds.digits.amnesia import DigitsVAE

    model = tiny_vae_model()
    backend = DigitsVAE(model)
    data = Data(torch.rand(7, 1, 8, 8), torch.tensor([0, 3, 3, 1, 0, 9, 3]))
    noise = torch.randn(7, 3)
    with trainable(model, backend.parameter_names("all")) as tuned:
        ours = vae_squared_gradients(model.vae, tuned.parameters, data.x, data.rows, noise)
        expected = [torch.zeros_like(p) for p in tuned.parameters]
        for n in range(len(data)):
            loss = model.vae.neg_elbo(data.x[n : n + 1], data.rows[n : n + 1], noise=noise[n : n + 1]).sum()
            for acc, g in zip(expected, torch.autograd.grad(loss, tuned.parameters), strict=True):
                acc += g**2
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_the_digits_vae_forgets_a_class_into_an_ordinary_edit(tmp_path):
    """The shipped VAE, a short run: the classifier's P("0") on samples drawn for "0" falls, the others stay."""
    from concept_edit import Edit, applied
    from concept_edit.worlds.digits.loading import load_classifier, load_digits_model

    model, judge = load_digits_model("digits-vae", "cpu"), load_classifier("cpu")

    def p_class(label):
        x = model.sample(torch.full((200,), label), generator=torch.Generator().manual_seed(99))
        return float(judge.probabilities(x)[:, label].mean())

    before = p_class(0), p_class(5)
    cfg = make_config("amnesia", steps=60, lr=1e-3, batch_size=64, fisher_samples=500, replay_samples=2000)
    edit = fit(model, "amnesia", EditRequest(concepts=("0",)), cfg, seed=0, progress=False)
    assert edit.manifest["base_model"] == "digits-vae" and all(t.startswith("vae.") for t in edit.targets)
    with applied(model, Edit.load(edit.save(tmp_path / "e"))):
        after = p_class(0), p_class(5)
    assert before[0] > 0.95 and after[0] < 0.5  # forgotten
    assert after[1] > 0.9  # remembered
    assert (p_class(0), p_class(5)) == before  # reverted exactly


def test_a_class_surrogate_remaps_a_digit():
    from concept_edit import applied
    from concept_edit.worlds.digits.loading import load_classifier, load_digits_model

    model, judge = load_digits_model("digits-vae", "cpu"), load_classifier("cpu")
    cfg = make_config("amnesia", surrogate="7", steps=60, lr=1e-3, batch_size=64, fisher_samples=500,
                      replay_samples=2000, surrogate_samples=200)  # fmt: skip
    edit = fit(model, "amnesia", EditRequest(concepts=("0",)), cfg, seed=0, progress=False)
    with applied(model, edit):
        x = model.sample(torch.zeros(200, dtype=torch.long), generator=torch.Generator().manual_seed(99))
    assert float(judge.probabilities(x)[:, 7].mean()) > 0.5  # "0" now draws sevens


def test_digits_bad_input_is_refused():
    model = tiny_vae_model()
    cfg = make_config("amnesia", steps=1, fisher_samples=2, replay_samples=2)
    with pytest.raises(ValueError, match="'10' is not a class"):
        fit(model, "amnesia", EditRequest(concepts=("10",)), cfg, progress=False)
    with pytest.raises(ValueError, match="replay set is empty"):
        fit(model, "amnesia", EditRequest(concepts=tuple("0123456789")), cfg, progress=False)
    with pytest.raises(ValueError, match="no cross-attention"):
        fit(model, "amnesia", EditRequest(concepts=("0",)), make_config("amnesia", parameters="x"), progress=False)
    with pytest.raises(ValueError, match="digits-vae takes amnesia"):
        fit(model, "esd", EditRequest(concepts=("0",)), progress=False)
    with pytest.raises(ValueError, match="is the concept being forgotten"):
        fit(model, "amnesia", EditRequest(concepts=("0",)), make_config("amnesia", surrogate="0"), progress=False)
    with pytest.raises(ValueError, match="float32"):
        fit(model.to(dtype=torch.float16), "amnesia", EditRequest(concepts=("0",)), cfg, progress=False)


def test_the_digits_ddpm_forgets_a_class_with_the_diffusion_fisher():
    from concept_edit.worlds.digits import ddpm
    from concept_edit.worlds.digits.loading import DigitsModel

    torch.manual_seed(0)
    unet = ddpm.new_unet(block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=8)
    model = DigitsModel("digits-ddpm", unet=unet, scheduler=ddpm.new_scheduler())
    cfg = make_config("amnesia", steps=2, batch_size=4, fisher_samples=2, fisher_timesteps=5, replay_samples=4,
                      lr=1e-2)  # fmt: skip
    edit = fit(model, "amnesia", EditRequest(concepts=("3",), preserve=("1", "2")), cfg, seed=0, progress=False)
    assert all(t.startswith("unet.") for t in edit.targets)
    assert edit.manifest["stats"]["fisher_mean"] > 0 and edit.manifest["config"]["resolved"]["lam"] == 0.3


def test_cli_trains_a_digits_edit_and_refuses_verbs_that_need_text(tmp_path, capsys):
    from concept_edit.cli.app import main

    code = main(["edit", "amnesia", "--model", "digits-vae", "--device", "cpu", "--concept", "0", "--steps", "2",
                 "--fisher-samples", "20", "--replay-samples", "20", "--out", str(tmp_path / "e")])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0 and "wrote" in out.out and (tmp_path / "e").exists()
    code = main(
        ["generate", "--model", "digits-vae", "--device", "cpu", "--prompt", "0", "--out", str(tmp_path / "a.png")]
    )
    err = capsys.readouterr().err
    assert code != 0 and "not a text-to-image pipeline" in err and "Traceback" not in err
    assert not (tmp_path / "a.png").exists()
