"""CAD: scores are w * dJ/dw of eq. 4 / eq. 5, the ablation zeroes exactly the chosen entries, resume is exact."""

import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from concept_edit import EditRequest, applied, apply, fit, make_config, make_inputs, revert
from concept_edit.methods.cad import attribution as attribution_module
from concept_edit.methods.cad.ablation import ablation_indices, per_row_count
from concept_edit.methods.cad.attribution import group_weights
from concept_edit.methods.cad.check import approximation_check
from concept_edit.methods.cad.fit import CADInputs, attribute, load_scores, save_scores
from concept_edit.training import Interrupted, step_generator

FAST = {"samples": 2, "steps": 4, "batch_size": 3}


def config(*, amplify: bool = False, **options):
    """FAST; amplify samples nothing, so it gets no `samples` (refused there: it would do nothing)."""
    fast = {k: v for k, v in FAST.items() if not (amplify and k == "samples")}
    return make_config("cad", **{**fast, **options})


def independent_erase_gradients(pipe, prompt: str, names, *, trajectories: int, steps: int, guidance: float, seed: int):
    """dJ/dw of eq. 4 with c_base = "", from the pipeline's own encode_prompt and plain UNet calls:
    each trajectory is sampled on its own, and J sums (eps_c - sg(eps_u))^2 over elements, averaged over samples."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    cond, uncond = pipe.encode_prompt([prompt], "cpu", 1, True, [""])
    params = dict(pipe.unet.named_parameters())
    chosen = [params[n.removeprefix("unet.")] for n in names]
    total = [torch.zeros_like(p, dtype=torch.float64) for p in chosen]
    count = trajectories * steps
    for k in range(trajectories):
        x = torch.randn((1, 4, 8, 8), generator=step_generator(seed, k, 11))
        for t in scheduler.timesteps:
            with torch.no_grad():
                eps_u = pipe.unet(x, t, encoder_hidden_states=uncond).sample
            eps_c = pipe.unet(x, t, encoder_hidden_states=cond).sample
            j = ((eps_c - eps_u.detach()) ** 2).sum() / count
            for acc, g in zip(total, torch.autograd.grad(j, chosen), strict=True):
                acc += g.double()
            with torch.no_grad():
                x = scheduler.step(eps_u + guidance * (eps_c - eps_u), t, x).prev_sample
    return dict(zip(names, total, strict=True))


@pytest.mark.parametrize("modules", [("ff",), ("attn2", "residual")])
def test_scores_are_weight_times_an_independent_gradient(sd, modules):
    cfg = config(modules=modules, batch_size=5)
    result = attribute(sd, EditRequest(concepts=("cat",)), cfg, CADInputs(), seed=4, progress=False)
    names = list(result.weights)
    grads = independent_erase_gradients(sd, "cat", names, trajectories=2, steps=4, guidance=3.0, seed=4)
    expected = {name: result.weights[name].detach().double() * grads[name] for name in names}
    scale = max(e.abs().max() for e in expected.values())  # some weights barely matter: one scale for all
    assert scale > 0
    # float32 on both sides, batched (5) against one trajectory at a time: different conv kernels and sum orders
    # differ by up to ~1.5e-5 of the largest score (seen with one thread); a wrong formula (a missing weight
    # factor, 1/count, guidance or sign) is off by the order of the scores themselves
    for name in names:
        torch.testing.assert_close(result.scores[name].double(), expected[name], atol=1e-4 * scale, rtol=1e-4)
    assert {p.requires_grad for p in sd.unet.parameters()} == {True}  # flags as they were (tiny model: all True)
    assert all(p.grad is None for p in sd.unet.parameters())


def test_the_stop_gradient_matters(sd, monkeypatch):
    """The check above can fail: without sg on the base branch the scores differ by far more than its tolerance."""
    result = attribute(sd, EditRequest(concepts=("cat",)), config(), CADInputs(), seed=4, progress=False)
    name = next(iter(result.weights))
    real_losses = attribution_module.sample_losses

    def losses_without_sg(pipe, samples, cond, objective):
        rows = torch.full_like(samples.rows, 1)  # the "" row: the base recomputed with the weights, no sg
        from concept_edit.models.conditioning import predict_noise

        base = predict_noise(pipe.unet, samples.latents, samples.timesteps, cond.take(rows))
        moved = attribution_module.Samples(samples.latents, samples.timesteps, samples.rows, base)
        return real_losses(pipe, moved, cond, objective)

    monkeypatch.setattr(attribution_module, "sample_losses", losses_without_sg)
    other = attribute(sd, EditRequest(concepts=("cat",)), config(), CADInputs(), seed=4, progress=False)
    gap = (other.scores[name] - result.scores[name]).abs().max()
    assert gap > 1e-2 * result.scores[name].abs().max()


def test_per_row_selection_takes_the_top_positive_entries_and_at_least_one():
    score = torch.tensor([[0.5, -2.0, 0.1, 0.3], [-0.1, -0.2, -0.3, -0.4], [0.0, 0.9, 0.8, -1.0]])
    # ratio 0.5 of 4 columns: two per row; row 1 has no positive entry, row 2's zero is not positive
    assert ablation_indices(score, 0.5, "erase").tolist() == [0, 3, 9, 10]
    assert ablation_indices(score, 0.5, "amplify").tolist() == [1, 6, 7, 11]  # negative entries only
    assert ablation_indices(score, 0.01, "erase").tolist() == [0, 9]  # floor(0.04) = 0 -> at least one per row
    assert ablation_indices(score, 0.25, "erase", scope="tensor").tolist() == [0, 9, 10]  # top 3 of 12
    assert per_row_count(0.29, 100) == 29 and per_row_count(0.001, 320) == 1 and per_row_count(0.001, 5120) == 5
    assert per_row_count(0.001, 320, minimum=0) == 0  # the official count skips narrow rows
    assert ablation_indices(score, 0.01, "erase", minimum=0).tolist() == []
    assert ablation_indices(score, 0.25, "erase", minimum=0).tolist() == [0, 9]  # int(0.25 * 4) = 1 per row


def test_conv_rows_are_output_filters():
    score = torch.zeros(2, 3, 2, 2)
    score[0, 2, 1, 1], score[1, 0, 0, 0] = 1.0, 2.0
    assert ablation_indices(score, 0.01, "erase").tolist() == [11, 12]


def test_edit_zeroes_exactly_the_chosen_entries_and_reverts_exactly(sd):
    request = EditRequest(concepts=("cat",))
    result = attribute(sd, request, config(), CADInputs(), seed=0, progress=False)
    edit = fit(sd, "cad", request, config(ablate_ratio=0.05), seed=0, progress=False)
    before = {n: p.detach().clone() for n, p in sd.unet.named_parameters()}
    apply(sd, edit)
    zeroed = 0
    for name, weight in result.weights.items():
        index = ablation_indices(result.scores[name], 0.05, "erase")
        now, was = weight.detach().reshape(-1), before[name.removeprefix("unet.")].reshape(-1)
        assert torch.all(now[index] == 0)
        keep = torch.ones_like(now, dtype=torch.bool)
        keep[index] = False
        assert torch.equal(now[keep], was[keep])
        zeroed += len(index)
    assert edit.manifest["stats"]["zeroed"] == zeroed > 0
    assert set(edit.kinds) == {"sparse"}
    revert(sd)
    for name, p in sd.unet.named_parameters():
        assert torch.equal(p.detach(), before[name])


def test_approximation_check_correlates_on_small_random_subsets(sd):
    result = attribute(sd, EditRequest(concepts=("cat",)), config(modules=("ff", "attn2")), CADInputs(), seed=0,
                       progress=False)  # fmt: skip
    before = {n: p.detach().clone() for n, p in sd.unet.named_parameters()}
    check = approximation_check(sd, result, subsets=20, fraction=0.002, seed=0)
    assert check.pearson > 0.9, check.to_dict()
    assert np.abs(check.actual).max() > 0
    for name, p in sd.unet.named_parameters():
        assert torch.equal(p.detach(), before[name])  # every subset was restored exactly


def write_images(folder, n=3, broken=1):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"img{k}.png")
    for k in range(broken):
        (folder / f"broken{k}.jpg").write_bytes(b"not an image")
    return folder


def test_amplify_on_a_folder_skips_unreadable_files_and_lowers_the_loss(sd, tmp_path, caplog):
    folder = write_images(tmp_path / "imgs")
    request = EditRequest(concepts=("cat",), mode="amplify")
    inputs = make_inputs("cad", images=str(folder))
    with caplog.at_level("WARNING"):
        result = attribute(sd, request, config(amplify=True), inputs, seed=0, progress=False)
    assert "1 of 4 image files" in caplog.text
    assert len(result.samples) == 3 * 4  # every image at every DDIM step
    edit = fit(sd, "cad", request, config(amplify=True, ablate_ratio=0.02), inputs, seed=0, progress=False)
    before = attribution_module.objective_value(sd, result.samples, result.cond, "amplify")
    with torch.no_grad(), applied(sd, edit):
        after = attribution_module.objective_value(sd, result.samples, result.cond, "amplify")
    assert after > before  # J = -loss went up: the loss on the concept's images went down


def test_shapes_renders_as_amplify_images(shapes):
    from concept_edit.methods.cad.images import resolve_images

    images = resolve_images("shapes:diamond:3", 32)
    assert images.pixels.shape == (3, 3, 32, 32) and -1 <= images.pixels.min() < images.pixels.max() <= 1
    with pytest.raises(ValueError, match="OBJECT one of"):
        resolve_images("shapes:blob", 32)


def test_resume_after_ctrl_c_equals_an_uninterrupted_run(sd, tmp_path, monkeypatch):
    request = EditRequest(concepts=("cat",))
    cfg = config(batch_size=2)  # 8 samples: 4 batches
    whole = attribute(sd, request, cfg, CADInputs(), seed=2, progress=False)
    ckpt = tmp_path / "cad.ckpt"
    calls = {"n": 0}
    real = attribution_module.add_batch_gradient

    def batch_then_ctrl_c(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr("concept_edit.methods.cad.fit.add_batch_gradient", batch_then_ctrl_c)
    with pytest.raises(Interrupted):
        attribute(sd, request, cfg, make_inputs("cad", checkpoint=ckpt), seed=2, progress=False)
    monkeypatch.setattr("concept_edit.methods.cad.fit.add_batch_gradient", real)
    resumed = attribute(sd, request, cfg, make_inputs("cad", checkpoint=ckpt, resume=True), seed=2, progress=False)
    for name in whole.scores:
        torch.testing.assert_close(resumed.scores[name], whole.scores[name], atol=0, rtol=0)
    assert all(p.grad is None for p in sd.unet.parameters())


def test_scores_file_round_trip_and_refusals(sd, other_sd, tmp_path):
    request = EditRequest(concepts=("cat",))
    result = attribute(sd, request, config(), CADInputs(), seed=0, progress=False)
    path = save_scores(tmp_path / "s.safetensors", result, request, config(), 0, sd)
    direct = fit(sd, "cad", request, config(ablate_ratio=0.05), seed=0, progress=False)
    inputs = make_inputs("cad", scores=path)
    from_file = fit(sd, "cad", request, config(ablate_ratio=0.05), inputs, seed=0, progress=False)
    for a, b in zip(direct.changes(), from_file.changes(), strict=True):
        assert a.target == b.target and torch.equal(a.indices, b.indices)
    with pytest.raises(ValueError, match="other weights"):
        load_scores(path, other_sd, request, ("ff",))
    with pytest.raises(ValueError, match="not erase scores for"):
        load_scores(path, sd, EditRequest(concepts=("dog",)), ("ff",))
    with pytest.raises(ValueError, match="no scores for"):
        load_scores(path, sd, request, ("attn2",))


def test_amplify_composes_on_top_of_an_erasing_edit(sd):
    """Table 7: CAD-Amplify fitted on a UCE-erased model, then both edits stacked."""
    import concept_edit

    uce = fit(sd, "uce", EditRequest(concepts=("cat",)), seed=0, progress=False)
    apply(sd, uce)
    amplify = fit(sd, "cad", EditRequest(concepts=("cat",), mode="amplify"), config(amplify=True, ablate_ratio=0.05),
                  make_inputs("cad", images="shapes:circle:2"), seed=0, progress=False)  # fmt: skip
    revert(sd)
    from concept_edit.edit.apply import applied_edits
    from concept_edit.models.conditioning import encode_conditions, predict_noise

    x, t = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0)), torch.tensor(500)
    cond = encode_conditions(sd, ["cat"])
    with torch.no_grad(), concept_edit.applied(sd, uce):
        erased = predict_noise(sd.unet, x, t, cond)
    with torch.no_grad(), concept_edit.applied(sd, uce, amplify):
        assert len(applied_edits(sd)) == 2
        both = predict_noise(sd.unet, x, t, cond)
    assert (both - erased).abs().max() > 1e-4


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ablate_ratio": 0}, "ablate_ratio must be > 0"),
        ({"ablate_ratio": 1.0}, "ablate_ratio must be < 1"),
        ({"ablate_ratio": float("nan")}, "finite"),
        ({"modules": ("ffn",)}, "modules must be one of"),
        ({"modules": ()}, "name at least one group"),
        ({"scope": "layer"}, "scope must be one of"),
    ],
)
def test_bad_options_are_one_clear_error(options, message):
    with pytest.raises(ValueError, match=message):
        make_config("cad", **options)


def test_bad_inputs_write_nothing(sd, tmp_path):
    with pytest.raises(ValueError, match="amplify needs images"):
        fit(sd, "cad", EditRequest(concepts=("cat",), mode="amplify"), config(amplify=True))
    with pytest.raises(ValueError, match="none readable"):
        fit(sd, "cad", EditRequest(concepts=("cat",), mode="amplify"), config(amplify=True),
            make_inputs("cad", images=str(write_images(tmp_path / "bad", n=0, broken=2))))  # fmt: skip
    with pytest.raises(ValueError, match="applies to amplify only"):
        fit(sd, "cad", EditRequest(concepts=("cat",)), config(), make_inputs("cad", images="shapes:circle"))
    with pytest.raises(ValueError, match="match no layer"):
        group_weights(type("Pipe", (), {"unet": torch.nn.Sequential(torch.nn.Linear(2, 2))})(), ("ff",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


def test_cli_attribute_then_edit_from_the_scores_and_check(sd_folder, tmp_path, capsys):
    from concept_edit.cli.app import main

    fast = ["--samples", "1", "--steps", "3"]
    scores = tmp_path / "scores.safetensors"
    assert main(["attribute", "--model", str(sd_folder), "--concept", "cat", *fast, "--out", str(scores)]) == 0
    out = capsys.readouterr().out
    assert "positive mass" in out and "| ff | down_blocks |" in out
    edit_dir = tmp_path / "no-cat"
    code = main(["edit", "cad", "--model", str(sd_folder), "--concept", "cat", "--scores", str(scores),
                 "--ablate-ratio", "0.05", "--out", str(edit_dir)])  # fmt: skip
    assert code == 0 and (edit_dir / "edit.safetensors").exists()
    png = tmp_path / "check.png"
    code = main(["cad-check", "--model", str(sd_folder), "--concept", "cat", *fast, "--subsets", "5",
                 "--fraction", "0.01", "--out", str(png)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "Pearson r" in out and png.exists() and png.with_suffix(".json").exists()
    # amplify on top of the erasing edit: --edit applies it first
    amp = ["--mode", "amplify", "--images", "shapes:circle:2", "--steps", "3", "--out", str(tmp_path / "amp")]
    code = main(["edit", "cad", "--model", str(sd_folder), "--edit", str(edit_dir), "--concept", "cat", *amp])
    assert code == 0 and (tmp_path / "amp" / "edit.safetensors").exists()


def test_cli_bad_cad_input_writes_nothing(sd_folder, tmp_path, capsys):
    from concept_edit.cli.app import main

    base = ["--model", str(sd_folder), "--concept", "cat"]
    cases = [
        (["edit", "cad", *base, "--ablate-ratio", "1.5", "--out", str(tmp_path / "a")], "ablate_ratio must be <= 1"),
        (["edit", "cad", *base, "--mode", "amplify", "--out", str(tmp_path / "b")], "amplify needs images"),
        (["edit", "cad", *base, "--modules", "mlp", "--out", str(tmp_path / "c")], "modules must be one of"),
        (["attribute", *base, "--mode", "amplify", "--images", str(tmp_path), "--out", str(tmp_path / "s.safetensors")],
         "no image file"),
        (["cad-check", *base, "--fraction", "2", "--out", str(tmp_path / "c.png")], "--fraction must be <= 1"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_amplify_scores_are_weight_times_an_independent_gradient_of_minus_the_loss(sd):
    """Eq. 5 from scratch: VAE latents (sampled, scaled), noised at every DDIM timestep, J = -mean loss."""
    from diffusers import DDIMScheduler

    from concept_edit.methods.cad.images import ConceptImages

    pixels = torch.rand((2, 3, 32, 32), generator=torch.Generator().manual_seed(0)) * 2 - 1
    request = EditRequest(concepts=("cat",), mode="amplify")
    inputs = make_inputs("cad", images=ConceptImages(pixels, "test"))
    result = attribute(sd, request, config(amplify=True), inputs, seed=5, progress=False)
    scheduler = DDIMScheduler.from_config(sd.scheduler.config)
    scheduler.set_timesteps(4)
    cond = sd.encode_prompt(["cat"], "cpu", 1, False)[0]
    names = list(result.weights)
    params = dict(sd.unet.named_parameters())
    chosen = [params[n.removeprefix("unet.")] for n in names]
    total = [torch.zeros_like(p, dtype=torch.float64) for p in chosen]
    for k in range(2):
        with torch.no_grad():
            dist = sd.vae.encode(pixels[k : k + 1]).latent_dist
            z = dist.sample(generator=step_generator(5, k, 12)) * sd.vae.config.scaling_factor
        noise = torch.randn((4, *z.shape[1:]), generator=step_generator(5, k, 13))
        for j, t in enumerate(scheduler.timesteps):
            x = scheduler.add_noise(z, noise[j : j + 1], t.reshape(1))
            pred = sd.unet(x, t, encoder_hidden_states=cond).sample
            j_value = -((pred - noise[j : j + 1]) ** 2).mean() / 8  # J = -E loss over 2 images x 4 steps
            for acc, g in zip(total, torch.autograd.grad(j_value, chosen), strict=True):
                acc += g.double()
    expected = {n: result.weights[n].detach().double() * g for n, g in zip(names, total, strict=True)}
    scale = max(e.abs().max() for e in expected.values())
    for name in names:
        torch.testing.assert_close(result.scores[name].double(), expected[name], atol=1e-5 * scale, rtol=1e-4)


def test_v_prediction_output_is_read_as_epsilon(sd):
    from diffusers import DDPMScheduler

    from concept_edit.methods.cad.attribution import epsilon

    sd.scheduler = DDPMScheduler.from_config(sd.scheduler.config, prediction_type="v_prediction")
    clean, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([10, 500, 990])
    noisy = sd.scheduler.add_noise(clean, noise, t)
    velocity = sd.scheduler.get_velocity(clean, noise, t)
    torch.testing.assert_close(epsilon(sd, velocity, noisy, t), noise, atol=1e-4, rtol=1e-4)
    sd.scheduler = DDPMScheduler.from_config(sd.scheduler.config, prediction_type="sample")
    with pytest.raises(ValueError, match="epsilon or v-prediction"):
        epsilon(sd, velocity, noisy, t)


def test_attribution_restores_requires_grad_flags_and_existing_gradients(sd):
    frozen = next(iter(sd.unet.parameters()))
    frozen.requires_grad_(False)
    kept = list(sd.unet.parameters())[-1]
    kept.grad = torch.ones_like(kept)
    attribute(sd, EditRequest(concepts=("cat",)), config(), CADInputs(), seed=0, progress=False)
    assert frozen.requires_grad is False and frozen.grad is None
    assert torch.equal(kept.grad, torch.ones_like(kept))


def test_sdxl_attributes_and_prunes(sdxl):
    """SDXL's conditioning (pooled text, time ids) reaches every UNet call; the edit applies and reverts."""
    before = {n: p.detach().clone() for n, p in sdxl.unet.named_parameters()}
    edit = fit(sdxl, "cad", EditRequest(concepts=("cat",)), config(ablate_ratio=0.05, modules=("ff", "attn2")),
               seed=0, progress=False)  # fmt: skip
    assert edit.manifest["stats"]["zeroed"] > 0
    apply(sdxl, edit)
    revert(sdxl)
    for name, p in sdxl.unet.named_parameters():
        assert torch.equal(p.detach(), before[name])


def test_a_half_precision_vae_that_asks_for_it_encodes_in_float32(sd):
    """SDXL's fp16 VAE overflows: with force_upcast the amplify latents are the float32 encoder's."""
    from concept_edit.methods.cad.attribution import _encode

    pixels = torch.rand((1, 3, 32, 32), generator=torch.Generator().manual_seed(0)) * 2 - 1
    expected = sd.vae.encode(pixels).latent_dist.mean
    sd.vae.half()
    assert sd.vae.config.force_upcast
    got = _encode(sd.vae, pixels).mean
    assert got.dtype == torch.float32 and next(sd.vae.parameters()).dtype == torch.float16
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=1e-2)  # the weights were rounded to fp16 once
    sd.vae.register_to_config(force_upcast=False)
    assert _encode(sd.vae, pixels).mean.dtype == torch.float16
