"""ESD: the training target is the paper's formula, only the chosen parameters train, resume is exact."""

import os
import signal

import pytest
import torch

from concept_edit import EditRequest, fit, make_config, make_inputs
from concept_edit.edit import trainable
from concept_edit.methods.esd import fit as esd
from concept_edit.models.conditioning import encode_conditions, predict_noise
from concept_edit.training import Interrupted, step_generator

FAST = {"iterations": 2, "pool_trajectories": 2, "sampling_steps": 3, "refresh_every": 1, "lr": 1e-2}


def config(**options):
    """FAST, with the pool's options only for the pool schedule (elsewhere they do nothing and are refused)."""
    merged = {**FAST, **options}
    if merged.get("schedule", "stream") != "pool":
        merged = {k: v for k, v in merged.items() if k not in ("pool_trajectories", "refresh_every")}
    return make_config("esd", **merged)


def direct(pipe, x, t, prompt):
    """The original UNet's prediction, called the plain way."""
    with torch.no_grad():
        return predict_noise(pipe.unet, x, t, encode_conditions(pipe, [prompt] * len(x)))


def trainer_for(pipe, request, cfg, keys, **kw):
    tuned_cm = trainable(pipe, keys, **kw)
    tuned = tuned_cm.__enter__()
    lora = kw.get("kind") == "low_rank"
    return tuned_cm, tuned, esd._Trainer(pipe, request, cfg, pipe.unet, esd._frozen_view(pipe.unet, tuned, lora))


def reference_trajectory(pipe, prompt: str, noise: torch.Tensor, steps: int, guidance: float) -> list:
    """The latent before each guided DDIM step, from the pipeline's own encode_prompt and a plain UNet call."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    n = len(noise)
    cond, uncond = pipe.encode_prompt([prompt] * n, "cpu", 1, True, [""] * n)
    x, latents = noise, []
    with torch.no_grad():
        for t in scheduler.timesteps:
            latents.append(x)
            both = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
            eps_u, eps_c = both.chunk(2)
            x = scheduler.step(eps_u + guidance * (eps_c - eps_u), t, x).prev_sample
    return latents


def perturb(parameters, scale=0.05):
    with torch.no_grad():
        for p in parameters:
            p.add_(scale * torch.randn_like(p))


@pytest.mark.parametrize("sampler", ["frozen", "trained"])
@pytest.mark.parametrize("anchor", [None, "dog"])
@pytest.mark.parametrize("eta", [1.0, 0.0, 2.5])
def test_pool_targets_are_the_esd_formula_of_the_original_model(sd, sampler, anchor, eta):
    request = EditRequest(concepts=("cat",), guide=anchor)
    cfg = config(eta=eta, pool_trajectories=3, sampling_steps=4, sampler=sampler, schedule="pool")
    cm, tuned, trainer = trainer_for(sd, request, cfg, esd.variant_parameters(sd, "x"))
    torch.manual_seed(0)
    perturb(tuned.parameters)  # training has moved the weights: the targets must still be the original model's
    pool = trainer.sample_pool(seed=0, refresh=0)
    cm.__exit__(None, None, None)  # the original weights are back for the direct evaluation below

    noise = torch.randn((3, 4, 8, 8), generator=step_generator(0, 0, 1))
    reference = reference_trajectory(sd, "cat", noise, steps=4, guidance=cfg.sampling_guidance)
    blocks = pool.latents.reshape(4, 3, 4, 8, 8)  # step-major: the 3 trajectories' latents before step k
    assert torch.equal(pool.timesteps.reshape(4, 3)[:, 0], trainer.timesteps)
    for k in range(1, 4):
        if sampler == "frozen":  # x_t is the original model's own sample before step k
            torch.testing.assert_close(blocks[k], reference[k], atol=1e-5, rtol=1e-4)
        else:  # the model being trained drew it
            assert (blocks[k] - reference[k]).abs().max() > 1e-4
    base = direct(sd, pool.latents, pool.timesteps, anchor or "")
    concept = direct(sd, pool.latents, pool.timesteps, "cat")
    torch.testing.assert_close(pool.targets, base - eta * (concept - base), atol=1e-5, rtol=1e-4)
    if eta == 0 and anchor is None:  # the eigen paper's eq. 11: the concept is taught the unconditional output
        torch.testing.assert_close(pool.targets, direct(sd, pool.latents, pool.timesteps, ""), atol=1e-5, rtol=1e-4)


def test_official_loop_samples_have_the_same_targets(sd):
    cfg = config(schedule="official", batch_size=3, sampling_steps=5, eta=1.5)
    cm, tuned, trainer = trainer_for(sd, EditRequest(concepts=("cat",)), cfg, esd.variant_parameters(sd, "kv"))
    perturb(tuned.parameters)
    batch = trainer.official_samples(seed=0, step=0)
    cm.__exit__(None, None, None)
    base, concept = direct(sd, batch.latents, batch.timesteps, ""), direct(sd, batch.latents, batch.timesteps, "cat")
    torch.testing.assert_close(batch.targets, base - 1.5 * (concept - base), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("script, negative_guidance", [("diffusers", 2.0), ("diffusers", 3.5), ("compvis", 1.0)])
def test_an_official_scripts_negative_guidance_gives_that_scripts_target(sd, script, negative_guidance):
    """The diffusers script's target is eps_c - eta_d (eps_c - eps_0) (its default 2 is the paper's 1); CompVis
    writes eps_0 - eta (eps_c - eps_0). Each converted eta trains toward that script's own target."""
    eta = esd.eta_from_official(negative_guidance, script)
    cfg = config(schedule="official", batch_size=2, sampling_steps=4, eta=eta)
    cm, _, trainer = trainer_for(sd, EditRequest(concepts=("cat",)), cfg, esd.variant_parameters(sd, "kv"))
    batch = trainer.official_samples(seed=0, step=0)
    cm.__exit__(None, None, None)
    null, concept = direct(sd, batch.latents, batch.timesteps, ""), direct(sd, batch.latents, batch.timesteps, "cat")
    if script == "diffusers":
        official = concept - negative_guidance * (concept - null)
    else:
        official = null - negative_guidance * (concept - null)
    torch.testing.assert_close(batch.targets, official, atol=1e-5, rtol=1e-4)
    assert (concept - null).abs().max() > 1e-3  # the two conventions differ on this model: the check can fail
    if (script, negative_guidance) == ("diffusers", 2.0):
        assert eta == 1.0  # the official default is the paper's eta = 1, this project's default


def test_official_negative_guidance_below_the_paper_range_is_refused():
    with pytest.raises(ValueError, match="eta -0.5 < 0"):
        esd.eta_from_official(0.5, "diffusers")
    with pytest.raises(ValueError, match="script"):
        esd.eta_from_official(1.0, "kohya")


@pytest.mark.parametrize("sampler", ["frozen", "trained"])
def test_stream_trajectories_are_guided_ddim_and_targets_the_formula(sd, monkeypatch, sampler):
    """Three trajectories in flight, spread over the schedule; each iteration's (x_t, t) is the next latent of
    the plain guided DDIM trajectory of its own noise (the trained sampler at a vanishing lr: the same model),
    and its target is the formula on the original model."""
    steps, p = 4, 3
    cfg = config(schedule="stream", sampler=sampler, batch_size=p, sampling_steps=steps, iterations=6, lr=1e-12)
    seen = []
    real_predict = esd._Trainer.predict

    def record(self, batch):
        seen.append(batch)
        return real_predict(self, batch)

    monkeypatch.setattr(esd._Trainer, "predict", record)
    fit(sd, "esd", EditRequest(concepts=("cat",)), cfg, seed=2, progress=False)
    noises = torch.cat([torch.randn((1, 4, 8, 8), generator=step_generator(2, i, 4)) for i in range(6)])
    paths = [reference_trajectory(sd, "cat", noises[i : i + 1], steps, cfg.sampling_guidance) for i in range(6)]
    from diffusers import DDIMScheduler

    schedule = DDIMScheduler.from_config(sd.scheduler.config)
    schedule.set_timesteps(steps)
    timesteps = schedule.timesteps
    starts = [0, 1, 2]  # trajectory i pre-rolled to step i K / P
    slots = {0: 0, 1: 1, 2: 2}  # slot -> trajectory number; a finished one is replaced by the next number
    position = dict(enumerate(starts))
    started, checked = p, set()
    for batch in seen:
        for slot in range(p):
            k = position[slot]
            checked.add(slots[slot])
            torch.testing.assert_close(batch.latents[slot], paths[slots[slot]][k][0], atol=1e-4, rtol=1e-4)
            assert batch.timesteps[slot] == timesteps[k]
            position[slot] += 1
            if position[slot] == steps:
                slots[slot], position[slot], started = started, 0, started + 1
        base = direct(sd, batch.latents, batch.timesteps, "")
        concept = direct(sd, batch.latents, batch.timesteps, "cat")
        torch.testing.assert_close(batch.targets, base - (concept - base), atol=1e-5, rtol=1e-4)
    assert len(seen) == 6 and checked == set(range(6))  # three trajectories restarted along the way


def test_stream_trained_sampler_steps_with_the_weights_of_each_iteration(sd, monkeypatch):
    """At a real lr, each next latent is the guided DDIM step taken with the weights the iteration trained
    (before its update), not the original ones."""
    import copy

    from diffusers import DDIMScheduler

    cfg = config(schedule="stream", sampler="trained", batch_size=1, sampling_steps=4, iterations=4, lr=3e-2)
    seen = []
    real_predict = esd._Trainer.predict

    def record(self, batch):
        seen.append((batch, {n: p.detach().clone() for n, p in self.unet.named_parameters() if p.requires_grad}))
        return real_predict(self, batch)

    monkeypatch.setattr(esd._Trainer, "predict", record)
    fit(sd, "esd", EditRequest(concepts=("cat",)), cfg, seed=0, progress=False)
    scheduler = DDIMScheduler.from_config(sd.scheduler.config)
    scheduler.set_timesteps(4)
    cond, uncond = sd.encode_prompt(["cat"], "cpu", 1, True, [""])

    def guided_step(unet, x, t):
        with torch.no_grad():
            eps_u, eps_c = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
        return scheduler.step(eps_u + cfg.sampling_guidance * (eps_c - eps_u), t, x).prev_sample

    moved = []
    for (batch, weights), (following, _) in zip(seen, seen[1:], strict=False):
        trained = copy.deepcopy(sd.unet)
        trained.load_state_dict(weights, strict=False)
        x, t = batch.latents, batch.timesteps[0]
        expected = guided_step(trained, x, t)
        torch.testing.assert_close(following.latents, expected, atol=1e-4, rtol=1e-4)
        moved.append((guided_step(sd.unet, x, t) - expected).abs().max().item())
    assert len(moved) == 3 and moved[0] < 1e-5 and min(moved[1:]) > 1e-3  # iteration 0 trains the original


def test_stream_keeps_one_trajectory_per_concept_in_flight(sd):
    """Several concepts at batch 1: one slot per concept, and a restarted trajectory keeps its slot's concept,
    so every concept trains in every iteration (none is starved when few trajectories fit in a run)."""
    request = EditRequest(concepts=("cat", "dog", "bird"))
    cfg = config(schedule="stream", batch_size=1, sampling_steps=3)
    cm, _, trainer = trainer_for(sd, request, cfg, esd.variant_parameters(sd, "kv"))
    stream = trainer.start_stream(seed=0)
    assert stream.concepts.tolist() == [0, 1, 2] and stream.steps.tolist() == [0, 1, 2]
    for _ in range(4):
        batch, _ = trainer.stream_batch(stream)
        assert sorted(batch.concepts.tolist()) == [0, 1, 2]
        trainer.advance_stream(stream, batch, torch.zeros_like(batch.latents), None, seed=0)
    assert stream.concepts.tolist() == [0, 1, 2] and int(stream.started) == 3 + 4
    cm.__exit__(None, None, None)


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


def official_rule(pipe, variant: str, sdxl: bool = False) -> set[str]:
    """The official scripts' selection, by module class and name (esd_sd.py; esd_sdxl.py for SDXL's u/all)."""
    names = set()
    for name, module in pipe.unet.named_modules():
        if type(module).__name__ not in ("Linear", "Conv2d"):
            continue
        broad = not sdxl or ("emb" not in name and "block" in name)
        keep = {
            "x": "attn2" in name,
            "u": "attn2" not in name and broad,
            "all": broad,
            "kv": "attn2.to_k" in name or "attn2.to_v" in name,
        }[variant]
        if keep:
            names.update(f"unet.{name}.{p}" for p, _ in module.named_parameters(recurse=False))
    return names


@pytest.mark.parametrize("variant", esd.VARIANTS)
def test_variants_select_the_official_modules(sd, sdxl, variant):
    assert set(esd.variant_parameters(sd, variant)) == official_rule(sd, variant)
    assert set(esd.variant_parameters(sdxl, variant)) == official_rule(sdxl, variant, sdxl=True)
    if variant == "u":  # SDXL leaves out the embeddings and conv_in/out; SD trains them
        assert "unet.time_embedding.linear_1.weight" in esd.variant_parameters(sd, "u")
        assert "unet.time_embedding.linear_1.weight" not in esd.variant_parameters(sdxl, "u")


@pytest.mark.parametrize("variant", esd.VARIANTS)
def test_two_iterations_change_only_the_chosen_parameter_group(sd, variant):
    edit = fit(sd, "esd", EditRequest(concepts=("cat",)), config(variant=variant), seed=0, progress=False)
    keys = {c.target for c in edit.changes()}
    assert keys and keys <= official_rule(sd, variant)
    assert not any("norm" in k for k in keys)  # norm layers never train (official module selection)


def test_lora_stores_low_rank_factors_of_the_chosen_weights(sd):
    torch.manual_seed(0)
    edit = fit(sd, "esd", EditRequest(concepts=("cat",)), config(lora_rank=2), seed=0, progress=False)
    assert set(edit.kinds) == {"low_rank"}
    assert all(".attn2." in c.target and c.target.endswith(".weight") for c in edit.changes())
    assert all(c.up.shape[1] <= 2 for c in edit.changes())


def test_several_concepts_train_in_one_run(sd):
    request = EditRequest(concepts=("cat", "dog"), guides=("a", "photo"))
    cfg = config(pool_trajectories=4, schedule="pool")
    cm, _, trainer = trainer_for(sd, request, cfg, esd.variant_parameters(sd, "kv"))
    pool = trainer.sample_pool(seed=0, refresh=0)
    cm.__exit__(None, None, None)
    assert set(pool.concepts.tolist()) == {0, 1}
    dog = pool.concepts == 1
    x, t = pool.latents[dog], pool.timesteps[dog]
    base, concept = direct(sd, x, t, "photo"), direct(sd, x, t, "dog")
    torch.testing.assert_close(pool.targets[dog], base - (concept - base), atol=1e-5, rtol=1e-4)
    edit = fit(sd, "esd", request, config(variant="kv"), seed=0, progress=False)
    assert edit.manifest["request"]["concepts"] == ["cat", "dog"]


@pytest.mark.parametrize(
    ("sampler", "schedule"),
    [("frozen", "pool"), ("trained", "pool"), ("frozen", "official"), ("trained", "stream"), ("frozen", "stream")],
)
def test_resume_after_ctrl_c_equals_an_uninterrupted_run(sd, tmp_path, monkeypatch, sampler, schedule):
    """Interrupted at iteration 4 of 7: a pool refreshed at 3 and stream trajectories restarted before and
    after the interruption (K = 3) must all be restored."""
    request = EditRequest(concepts=("cat",))
    cfg = config(iterations=7, refresh_every=3, sampler=sampler, batch_size=2, schedule=schedule)
    whole = fit(sd, "esd", request, cfg, seed=3, progress=False)

    ckpt = tmp_path / "run.ckpt"
    calls = {"n": 0}
    real_predict = esd._Trainer.predict

    def predict_then_ctrl_c(self, batch):
        calls["n"] += 1
        if calls["n"] == 4:  # during iteration 4 (pool refreshed at 3 / a trajectory restarted: must be restored)
            os.kill(os.getpid(), signal.SIGINT)
        return real_predict(self, batch)

    monkeypatch.setattr(esd._Trainer, "predict", predict_then_ctrl_c)
    inputs = make_inputs("esd", checkpoint=ckpt, checkpoint_every=100)
    with pytest.raises(Interrupted):
        fit(sd, "esd", request, cfg, inputs, seed=3, progress=False)
    assert ckpt.exists()
    monkeypatch.setattr(esd._Trainer, "predict", real_predict)
    resumed = fit(sd, "esd", request, cfg, make_inputs("esd", checkpoint=ckpt, resume=True), seed=3, progress=False)
    assert resumed.manifest["stats"] == whole.manifest["stats"]
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


def test_sdxl_conditioning_is_what_its_pipeline_feeds_the_unet(sdxl):
    embeds, negative, pooled, negative_pooled = sdxl.encode_prompt(
        prompt=["cat"], device="cpu", do_classifier_free_guidance=True
    )
    assert not negative.any() and not negative_pooled.any()  # force_zeros_for_empty_prompt
    size = (sdxl.default_sample_size * sdxl.vae_scale_factor,) * 2  # what the pipeline generates by default
    time_ids = sdxl._get_add_time_ids(
        size, (0, 0), size, embeds.dtype, text_encoder_projection_dim=sdxl.text_encoder_2.config.projection_dim
    )
    ours = encode_conditions(sdxl, ["cat", ""])
    torch.testing.assert_close(ours.embeds, torch.cat([embeds, negative]))
    torch.testing.assert_close(ours.added["text_embeds"], torch.cat([pooled, negative_pooled]))
    torch.testing.assert_close(ours.added["time_ids"], time_ids.repeat(2, 1))


def test_sdxl_one_iteration_is_one_adam_step_toward_the_esd_target(sdxl):
    """ESD-kv on SDXL, one iteration of the stream (batch 1: one trajectory, at its first DDIM step), recomputed
    here the plain way: x_t is the seed's noise, the conditioning is the pipeline's own encode_prompt (pooled text
    embeddings, zeros for "") and add_time_ids, the UNet is called directly, the target is eps_u - eta (eps_c -
    eps_u), and Adam's first step moves each weight by -lr g / (|g| + 1e-8). Where |g| is near Adam's eps that
    quotient is ill-conditioned, so those elements are only bounded by lr; the rest must match."""
    import copy

    from diffusers import DDIMScheduler

    lr, seed, steps = 1e-2, 5, 3
    original = copy.deepcopy(sdxl.unet)
    cfg = config(variant="kv", iterations=1, sampling_steps=steps, batch_size=1, lr=lr)  # stream, trained sampler
    edit = fit(sdxl, "esd", EditRequest(concepts=("cat",)), cfg, seed=seed, progress=False)

    scheduler = DDIMScheduler.from_config(sdxl.scheduler.config)
    scheduler.set_timesteps(steps)
    t, s = scheduler.timesteps[0], sdxl.default_sample_size
    x = torch.randn((1, 4, s, s), generator=step_generator(seed, 0, 4)) * scheduler.init_noise_sigma
    embeds, negative, pooled, negative_pooled = sdxl.encode_prompt(
        prompt=["cat"], device="cpu", do_classifier_free_guidance=True
    )
    size = (s * sdxl.vae_scale_factor,) * 2
    time_ids = sdxl._get_add_time_ids(
        size, (0, 0), size, embeds.dtype, text_encoder_projection_dim=sdxl.text_encoder_2.config.projection_dim
    )

    def eps(text, text_pooled):
        added = {"text_embeds": text_pooled, "time_ids": time_ids}
        return original(x, t, encoder_hidden_states=text, added_cond_kwargs=added).sample

    with torch.no_grad():
        eps_u, eps_c = eps(negative, negative_pooled), eps(embeds, pooled)
    assert (eps_c - eps_u).abs().max() > 1e-3  # the guidance term moves the target: a wrong eta or sign shows
    torch.nn.functional.mse_loss(eps(embeds, pooled), eps_u - cfg.eta * (eps_c - eps_u)).backward()
    grads = {f"unet.{name}": p.grad for name, p in original.named_parameters()}

    deltas = {c.target: c.delta for c in edit.changes()}
    assert set(deltas) == official_rule(sdxl, "kv")  # every to_k / to_v weight of the cross-attention, only them
    checked = total = 0
    for key, delta in deltas.items():
        g = grads[key]
        well_posed = g.abs() > 1e-6  # there eps / |g| < 1e-2 damps the float error of g in the quotient
        expected = -lr * g / (g.abs() + 1e-8)
        torch.testing.assert_close(delta[well_posed], expected[well_posed], atol=1e-4 * lr, rtol=0)
        assert delta.abs().max() <= lr  # an Adam first step never exceeds lr
        checked, total = checked + int(well_posed.sum()), total + g.numel()
    assert checked > total / 2  # most elements are checked exactly, not only bounded


def unet_state(pipe):
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}, {
        n: p.requires_grad for n, p in pipe.unet.named_parameters()
    }


def assert_restored(pipe, before):
    from peft.tuners.lora import LoraLayer

    weights, flags = unet_state(pipe)
    assert weights.keys() == before[0].keys() and all(torch.equal(weights[k], before[0][k]) for k in weights)
    assert flags == before[1]
    assert not pipe.unet.is_gradient_checkpointing
    assert not any(isinstance(m, LoraLayer) for m in pipe.unet.modules()) and not hasattr(pipe.unet, "peft_config")


@pytest.mark.parametrize(
    "options",
    [
        {"precision": "bf16", "gradient_checkpointing": True},
        {"lora_rank": 2, "precision": "bf16"},
        {"lora_rank": 2, "sampler": "trained"},
    ],
)
def test_mixed_precision_checkpointing_and_lora_train_and_restore_the_pipeline(sd, options):
    before = unet_state(sd)
    edit = fit(sd, "esd", EditRequest(concepts=("cat",)), config(**options), seed=0, progress=False)
    assert_restored(sd, before)
    for change in edit.changes():
        parts = change.parts().values()
        assert all(torch.isfinite(t).all() for t in parts) and any(t.any() for t in parts)


def test_lora_on_a_half_precision_model_trains_float32_adapters(sd):
    sd.to(torch.bfloat16)
    before = unet_state(sd)
    edit = fit(sd, "esd", EditRequest(concepts=("cat",)), config(lora_rank=2, lr=1e-3), seed=0, progress=False)
    assert_restored(sd, before)
    ups = [c.up for c in edit.changes()]
    assert ups and all(torch.isfinite(u).all() for u in ups) and any(u.any() for u in ups)


def test_an_interrupted_run_restores_the_pipeline(sd, tmp_path, monkeypatch):
    before = unet_state(sd)
    real_predict = esd._Trainer.predict

    def predict_then_ctrl_c(self, batch):
        os.kill(os.getpid(), signal.SIGINT)
        return real_predict(self, batch)

    monkeypatch.setattr(esd._Trainer, "predict", predict_then_ctrl_c)
    cfg = config(gradient_checkpointing=True)
    with pytest.raises(Interrupted):
        fit(sd, "esd", EditRequest(concepts=("cat",)), cfg, make_inputs("esd", checkpoint=tmp_path / "c"), seed=0)
    assert_restored(sd, before)


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


def test_defaults_are_the_papers_on_stable_diffusion_and_chosen_ones_on_shapes():
    """lr 1e-5 for 1000 iterations (the paper, CompVis train-esd.py) on a real model, whatever the variant;
    ShapesSD's own per-variant values only there; a given value always wins."""
    from concept_edit.worlds import get_world
    from concept_edit.worlds.shapes.tuned import ESD_ITERATIONS, ESD_LR

    real, shapes = get_world(None).method_defaults("esd", None), get_world("shapes").method_defaults("esd", None)
    for variant in esd.VARIANTS:
        cfg = make_config("esd", variant=variant)
        assert (cfg.learning_rate_for(real), cfg.iterations_for(real)) == (1e-5, 1000)
        assert cfg.learning_rate_for(shapes) == ESD_LR[variant]
        assert cfg.iterations_for(shapes) == ESD_ITERATIONS[variant]
    assert ESD_LR["x"] != 1e-5  # the two defaults differ, so the world's table is the one read
    given = make_config("esd", lr=2e-4, iterations=7)
    assert (given.learning_rate_for(real), given.iterations_for(shapes)) == (2e-4, 7)
    assert make_config("esd").eta == 1.0


def test_a_stable_diffusion_run_trains_at_the_papers_rate(sd):
    cfg = make_config("esd", iterations=1, sampling_steps=2)  # no lr given
    edit = fit(sd, "esd", EditRequest(concepts=("cat",)), cfg, progress=False)
    assert edit.manifest["stats"]["lr"] == 1e-5


def assert_same_edit(first, second, rtol=1e-4, atol=1e-6):
    """The two edits change the same tensors by the same parts, within float tolerance."""
    a = {c.target: c.parts() for c in first.changes()}
    b = {c.target: c.parts() for c in second.changes()}
    assert a.keys() == b.keys() and a
    for key, parts in a.items():
        for name, tensor in parts.items():
            torch.testing.assert_close(b[key][name], tensor, rtol=rtol, atol=atol)


def test_gradient_checkpointing_gives_the_same_edit(sd):
    """Recomputing activations in backward changes memory, not the result (float tolerance), and is switched off
    again after the fit."""
    plain = fit(sd, "esd", EditRequest(concepts=("cat",)), config(), seed=0, progress=False)
    checkpointed = fit(sd, "esd", EditRequest(concepts=("cat",)), config(gradient_checkpointing=True), seed=0,
                       progress=False)  # fmt: skip
    assert not sd.unet.is_gradient_checkpointing
    assert_same_edit(plain, checkpointed)
