"""AdvUnlearn: only the chosen weights train, the erasure target is ESD's formula on the original model, the inner
attack lowers its own loss on the weights as they are, resume is exact, a text-encoder edit is an ordinary edit
file (save, load, apply, revert, compose, export, export-lora), and bad input changes nothing."""

import os
import signal

import numpy as np
import pytest
import torch
from test_esd import assert_same_edit

from concept_edit import Edit, EditRequest, applied, apply, compose, fit, make_config, make_inputs, revert
from concept_edit.io import load_tree
from concept_edit.methods.advunlearn import fit as adv
from concept_edit.training import Interrupted

REQUEST = EditRequest(concepts=("cat",), preserve=("a dog", "a tree"))


def config(**options):
    merged = {"iterations": 6, "warmup": 2, "attack_steps": 3, "lr": 1e-3, "sampling_steps": 4, "refresh_every": 3,
              **options}  # fmt: skip
    return make_config("advunlearn", **merged)


def snapshot(pipe):
    return {f"{name}.{k}": v.clone() for name in ("unet", "text_encoder")
            for k, v in getattr(pipe, name).state_dict().items()}  # fmt: skip


def assert_state(pipe, reference):
    now = snapshot(pipe)
    assert now.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(now[key], value), key


@pytest.mark.parametrize("modules", ["text-encoder", "x", "kv"])
def test_only_the_chosen_weights_train_and_the_pipeline_is_restored(sd, modules):
    before = snapshot(sd)
    edit = fit(sd, "advunlearn", REQUEST, config(modules=modules), progress=False)
    assert_state(sd, before)
    chosen = set(adv.trained_parameters(sd, modules))
    assert edit.targets and set(edit.targets) <= chosen
    prefix = "text_encoder." if modules == "text-encoder" else "unet."
    assert all(t.startswith(prefix) for t in edit.targets)
    if modules == "x":
        assert all(".attn2." in t for t in edit.targets)
    elif modules == "kv":
        assert all(".attn2.to_k." in t or ".attn2.to_v." in t for t in edit.targets)
    else:  # no norm, no embedding table: the official text_encoder_full without --norm_layer
        assert not any("norm" in t or "embed" in t for t in edit.targets)
    stats = edit.manifest["stats"]
    assert stats["attacks"] == 4 and stats["warmup"] == 2  # one attack per step after the warmup


def trainer(pipe, cfg, request=REQUEST):
    from contextlib import ExitStack

    from concept_edit.edit import trainable

    stack = ExitStack()
    keys = adv.trained_parameters(pipe, cfg.modules)
    tuned = stack.enter_context(trainable(pipe, keys))
    view = adv._frozen_view(pipe.unet, tuned, lora=False) if cfg.modules != "text-encoder" else None
    return stack, tuned, adv._Trainer(pipe, request, cfg, pipe.unet, view, list(request.preserve))


@pytest.mark.parametrize("modules", ["text-encoder", "x"])
def test_pool_targets_are_the_esd_formula_and_the_original_predictions(sd, modules):
    """Independently: the original pipeline's own encode_prompt and UNet at the pool's x_t, after the trained
    weights have moved (so a target read from the trained model would differ)."""
    from concept_edit.methods.esd.fit import esd_target

    reference = {k: v.clone() for k, v in snapshot(sd).items()}
    cfg = config(modules=modules, eta=1.5)
    stack, tuned, tr = trainer(sd, cfg)
    with stack:
        with torch.no_grad():
            for p in tuned.parameters:
                p.add_(torch.randn_like(p) * 0.05)
        pool = tr.sample_pool(seed=1, refresh=0)
        moved = {k: v.clone() for k, v in snapshot(sd).items()}
    assert_state(sd, reference)  # the block gave the original weights back
    with torch.no_grad():
        embeds = sd.encode_prompt(["cat", "", "a dog", "a tree"], sd.device, 1, False)[0]

        def unet(x, t, rows):
            return sd.unet(x, t, encoder_hidden_states=embeds[rows]).sample

        eps_c = unet(pool.x, pool.t, torch.zeros(len(pool.x), dtype=torch.long))
        eps_u = unet(pool.x, pool.t, torch.ones(len(pool.x), dtype=torch.long))
        eps_r = unet(pool.retain_x, pool.retain_t, pool.retain + 2)
    assert any(not torch.equal(moved[k], reference[k]) for k in reference)
    torch.testing.assert_close(pool.eps_concept, eps_c, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pool.target, esd_target(eps_c, eps_u, 1.5), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pool.eps_retain, eps_r, rtol=1e-4, atol=1e-5)


def test_sample_from_original_draws_the_unedited_models_trajectories(sd):
    """After the trained weights move, --sample-from original gives the pool the unmoved model gives (its x_t and
    targets), while the official sampler's x_t move with the weights."""

    def pool_of(sample_from, move):
        stack, tuned, tr = trainer(sd, config(modules="x", sample_from=sample_from))
        with stack:
            if move:
                with torch.no_grad():
                    for p in tuned.parameters:
                        p.add_(torch.randn_like(p, generator=torch.Generator().manual_seed(0)) * 0.05)
            return tr.sample_pool(seed=1, refresh=0)

    before = pool_of("trained", move=False)
    original, trained = pool_of("original", move=True), pool_of("trained", move=True)
    for name in ("x", "eps_concept", "target", "retain_x", "eps_retain"):
        torch.testing.assert_close(getattr(original, name), getattr(before, name), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(trained.x, before.x, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("modules", ["x", "text-encoder"])
def test_sample_from_attacked_draws_under_the_latest_attack_with_the_plain_concepts_targets(sd, monkeypatch, modules):
    """--sample-from attacked: every pool refresh after the first attack is drawn under that attack's tokens (x_t
    moved by them), and its targets are still the original model's for the plain concept at those x_t."""
    seen = []
    real_pool, real_attack = adv._Trainer.sample_pool, adv._Trainer.attack

    def attack(self, *args):
        delta, loss = real_attack(self, *args)
        seen.append(("attack", delta.clone()))
        return delta, loss

    def sample_pool(self, seed, refresh, delta=None):
        pool = real_pool(self, seed, refresh, delta)
        seen.append(("pool", delta, pool, real_pool(self, seed, refresh)))
        return pool

    monkeypatch.setattr(adv._Trainer, "attack", attack)
    monkeypatch.setattr(adv._Trainer, "sample_pool", sample_pool)
    fit(sd, "advunlearn", REQUEST, config(modules=modules, iterations=7, sample_from="attacked"), progress=False)
    pools = [(i, e) for i, e in enumerate(seen) if e[0] == "pool"]  # refreshes at steps 0, 3, 6; attacks from 2
    assert [e[1] is None for _, e in pools] == [True, False, False]
    for i, (_, delta, pool, plain) in pools[1:]:
        latest = [e[1] for e in seen[:i] if e[0] == "attack"][-1]
        assert torch.equal(delta, latest)
        assert not torch.allclose(pool.x, plain.x, atol=1e-3)  # the attack's tokens steered the trajectories
        torch.testing.assert_close(pool.retain_x, plain.retain_x, rtol=0, atol=0)
    stack, tuned, tr = trainer(sd, config(modules=modules, eta=1.5))  # targets: the original UNet, plain concept
    with stack:
        pool = real_pool(tr, seed=1, refresh=0, delta=latest)
    with torch.no_grad():
        embeds = sd.encode_prompt(["cat", ""], sd.device, 1, False)[0]
        eps_c = sd.unet(pool.x, pool.t, encoder_hidden_states=embeds[[0] * len(pool.x)]).sample
        eps_u = sd.unet(pool.x, pool.t, encoder_hidden_states=embeds[[1] * len(pool.x)]).sample
    from concept_edit.methods.esd.fit import esd_target

    torch.testing.assert_close(pool.eps_concept, eps_c, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pool.target, esd_target(eps_c, eps_u, 1.5), rtol=1e-4, atol=1e-5)


def test_the_inner_attack_lowers_its_loss_on_the_current_weights(sd):
    stack, tuned, tr = trainer(sd, config())
    with stack:
        pool = tr.sample_pool(seed=0, refresh=0)
        start = tr.random_tokens(seed=0, step=0)

        def attack_loss(delta):
            with torch.no_grad():
                losses = []
                for i in range(len(pool.x)):
                    cond = tr.encode("adversarial", pool.concept[i : i + 1], delta)
                    pred = tr.eps(pool.x[i : i + 1], pool.t[i : i + 1], cond)
                    losses.append(torch.nn.functional.mse_loss(pred, pool.eps_concept[i : i + 1]).item())
                return np.mean(losses)

        delta, _ = tr.attack(pool, start, concept=0, steps=40, lr=0.05, seed=0, step=0)
        assert not torch.equal(delta, start)
        assert attack_loss(delta) < attack_loss(start)
        assert all(p.requires_grad for p in tuned.parameters)  # the attack froze them only while it ran


@pytest.mark.parametrize(("erase_batch", "bank"), [(1, 1), (3, 1), (3, 4)])
def test_with_two_concepts_each_erasure_step_trains_on_the_concept_last_attacked(sd, monkeypatch, erase_batch, bank):
    """Each sample is of the concept last attacked and (with a bank) under tokens found against that concept."""
    seen = {"attacks": [], "pairs": [], "token_pairs": []}
    real_attack, real_erase = adv._Trainer.attack, adv._Trainer.erase_loss

    def attack(self, pool, start, concept, *args):
        delta, loss = real_attack(self, pool, start, concept, *args)
        seen["attacks"].append((concept, delta.clone()))
        return delta, loss

    def erase(self, pool, i, delta):
        if delta is not None:
            assert len(i) == len(set(i.tolist())) == erase_batch  # distinct samples, all of the attacked concept
            seen["pairs"] += [(seen["attacks"][-1][0], int(c)) for c in pool.concept[i]]
            rows = delta.expand(len(i), -1, -1)
            for row, c in zip(rows, pool.concept[i].tolist(), strict=True):
                found = [a for a, d in seen["attacks"] if torch.equal(row, d[0])]
                seen["token_pairs"].append((found[-1], c))
        return real_erase(self, pool, i, delta)

    monkeypatch.setattr(adv._Trainer, "attack", attack)
    monkeypatch.setattr(adv._Trainer, "erase_loss", erase)
    request = EditRequest(concepts=("cat", "dog"), preserve=("a tree",))
    cfg = config(iterations=10, attack_every=2, erase_batch=erase_batch, attack_bank=bank)
    fit(sd, "advunlearn", request, cfg, progress=False)
    assert {a for a, _ in seen["pairs"]} == {0, 1} and all(a == e for a, e in seen["pairs"])
    assert all(a == c for a, c in seen["token_pairs"])


@pytest.mark.parametrize(("batch", "expected"), [(1, 1), (3, 3), (10**9, None)])
def test_each_inner_attack_step_is_on_attack_batch_samples_of_the_attacked_concept(sd, monkeypatch, batch, expected):
    """--attack-batch B: every Adam step of the inner attack predicts B pool samples at once, all of the concept
    being attacked (two concepts)."""
    seen = {"concept": None, "batches": []}
    real_attack, real_eps = adv._Trainer.attack, adv._Trainer.eps

    def attack(self, pool, start, concept, *args):
        seen["concept"], seen["pool"] = concept, pool
        delta, loss = real_attack(self, pool, start, concept, *args)
        seen["concept"] = None
        return delta, loss

    def eps(self, x, t, cond, **kwargs):
        if seen["concept"] is not None:  # inside the attack: which pool rows are these?
            rows = [int(torch.nonzero((seen["pool"].x == xi).flatten(1).all(1) & (seen["pool"].t == ti))[0])
                    for xi, ti in zip(x, t, strict=True)]  # fmt: skip
            seen["batches"].append([int(seen["pool"].concept[r]) for r in rows])
        return real_eps(self, x, t, cond, **kwargs)

    monkeypatch.setattr(adv._Trainer, "attack", attack)
    monkeypatch.setattr(adv._Trainer, "eps", eps)
    request = EditRequest(concepts=("cat", "dog"), preserve=("a tree",))
    fit(sd, "advunlearn", request, config(iterations=8, attack_batch=batch), progress=False)
    assert len(seen["batches"]) == 6 * 3  # 6 attacks after the warm-up, 3 steps each
    held = {c: int((seen["pool"].concept == c).sum()) for c in (0, 1)}  # a huge batch: the pool's samples of c
    assert all(len(b) == (expected or held[b[0]]) and len(set(b)) == 1 for b in seen["batches"])
    assert {b[0] for b in seen["batches"]} == {0, 1}  # both concepts attacked, each step on one


def test_with_a_bank_each_erasure_sample_trains_on_one_of_the_last_attacks(sd, monkeypatch):
    """--attack-bank 2: every erasure sample's tokens are those of the latest or the one before, both are used, and
    none older (6 attacks: after warm-up 2 of 8 iterations, one per step)."""
    seen = {"attacks": [], "bad": 0, "used": set(), "mixed": 0}
    real_attack, real_erase = adv._Trainer.attack, adv._Trainer.erase_loss

    def attack(self, *args):
        delta, loss = real_attack(self, *args)
        seen["attacks"].append(delta.clone())
        return delta, loss

    def erase(self, pool, i, delta):
        if delta is not None:
            assert delta.shape[0] == len(i) == 3
            for row in delta:
                hits = [j for j, a in enumerate(seen["attacks"]) if torch.equal(row, a[0])]
                recent = [j for j in hits if j >= len(seen["attacks"]) - 2]
                seen["bad"] += not recent
                seen["used"].update(len(seen["attacks"]) - 1 - j for j in recent)
            seen["mixed"] += not torch.equal(delta[0], delta[1]) or not torch.equal(delta[1], delta[2])
        return real_erase(self, pool, i, delta)

    monkeypatch.setattr(adv._Trainer, "attack", attack)
    monkeypatch.setattr(adv._Trainer, "erase_loss", erase)
    fit(sd, "advunlearn", REQUEST, config(iterations=8, erase_batch=3, attack_bank=2), progress=False)
    assert len(seen["attacks"]) == 6 and seen["bad"] == 0 and seen["used"] == {0, 1}
    assert seen["mixed"]  # drawn per sample, not one draw per step


@pytest.mark.parametrize("options", [{}, {"modules": "x", "null_space": 0.9, "erase_batch": 3, "attack_bank": 2}],
                         ids=["text-encoder", "x-null-space-batch-bank"])
def test_resume_after_ctrl_c_equals_an_uninterrupted_run(sd, tmp_path, monkeypatch, options):
    """Interrupted during iteration 4 of 7: the pool refreshed at 3 and the latest adversarial tokens restored
    (and with --null-space, the projection rebuilt from the same retain prompts)."""
    cfg = config(iterations=7, **options)
    whole = fit(sd, "advunlearn", REQUEST, cfg, seed=3, progress=False)
    ckpt = tmp_path / "run.ckpt"
    calls = {"n": 0}
    real = adv._Trainer.erase_loss

    def erase_then_ctrl_c(self, pool, i, delta):
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, pool, i, delta)

    monkeypatch.setattr(adv._Trainer, "erase_loss", erase_then_ctrl_c)
    with pytest.raises(Interrupted):
        fit(sd, "advunlearn", REQUEST, cfg, make_inputs("advunlearn", checkpoint=ckpt), seed=3, progress=False)
    assert ckpt.exists()
    saved = load_tree(ckpt)  # the bank is in the checkpoint: the last attack_bank attacks' tokens, or the latest
    bank = options.get("attack_bank", 1)
    assert len(saved["bank"]) == min(2, bank) and torch.equal(saved["bank"][-1], saved["delta"])
    monkeypatch.setattr(adv._Trainer, "erase_loss", real)
    banks, real_bank = [], adv._Trainer.bank_tokens

    def bank_tokens(self, bank_now, *args):
        banks.append(len(bank_now))
        return real_bank(self, bank_now, *args)

    monkeypatch.setattr(adv._Trainer, "bank_tokens", bank_tokens)
    resumed = fit(sd, "advunlearn", REQUEST, cfg, make_inputs("advunlearn", checkpoint=ckpt, resume=True), seed=3,
                  progress=False)  # fmt: skip
    assert banks[0] == min(2, bank)  # the first resumed step drew from the restored bank (and its new attack)
    assert resumed.manifest["stats"] == whole.manifest["stats"]
    for a, b in zip(whole.changes(), resumed.changes(), strict=True):
        assert a.target == b.target
        torch.testing.assert_close(a.delta, b.delta, atol=0, rtol=0)
    esd_ckpt = tmp_path / "esd.ckpt"  # a finished run leaves its checkpoint
    fit(sd, "esd", EditRequest(concepts=("cat",)), make_config("esd", iterations=2),
        make_inputs("esd", checkpoint=esd_ckpt), progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="not an? advunlearn checkpoint"):
        fit(sd, "advunlearn", REQUEST, cfg, make_inputs("advunlearn", checkpoint=esd_ckpt, resume=True))


def test_a_text_encoder_edit_is_an_ordinary_edit_file(sd, tmp_path):
    from concept_edit.export import export_pipeline
    from concept_edit.lora_export import export_lora

    before = snapshot(sd)
    edit = fit(sd, "advunlearn", REQUEST, config(), progress=False)
    loaded = Edit.load(edit.save(tmp_path / "adv"))
    assert loaded.manifest == edit.manifest
    apply(sd, loaded)
    edited = snapshot(sd)
    assert any(not torch.equal(edited[k], before[k]) for k in before if k.startswith("text_encoder."))
    for change in loaded.changes():  # applied exactly: original + delta
        key = change.target
        torch.testing.assert_close(edited[key], before[key] + change.delta.to(before[key].dtype), rtol=0, atol=0)
    revert(sd)
    assert_state(sd, before)
    uce = fit(sd, "uce", EditRequest(concepts=("dog",)), progress=False)
    merged = compose(sd, loaded, uce)
    with applied(sd, loaded, uce):
        sequential = snapshot(sd)
    with applied(sd, merged):
        for key, value in snapshot(sd).items():
            torch.testing.assert_close(value, sequential[key], rtol=1e-6, atol=1e-6)
    folder = export_pipeline(sd, [loaded], tmp_path / "exported")
    from diffusers import StableDiffusionPipeline

    exported = StableDiffusionPipeline.from_pretrained(folder)
    for key, value in exported.text_encoder.state_dict().items():
        torch.testing.assert_close(value, edited[f"text_encoder.{key}"], rtol=0, atol=0)
    assert_state(sd, before)
    with pytest.raises(ValueError, match="bias"):  # the dense text-encoder change trains biases too
        export_lora(sd, [loaded], tmp_path / "adv.safetensors")
    assert not (tmp_path / "adv.safetensors").exists()
    report = export_lora(sd, [loaded], tmp_path / "adv.safetensors", skip_biases=True, allow_dropped_biases=True)
    from safetensors import safe_open

    with safe_open(str(report.path), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("lora_te_") for k in keys)


BAD = [
    ({"attack_steps": 0}, REQUEST, "attack_steps"),
    ({"warmup": 6}, REQUEST, "warmup"),
    ({"attack_tokens": 0}, REQUEST, "attack_tokens"),
    ({"modules": "u"}, REQUEST, "modules"),
    ({}, EditRequest(concepts=("cat",), preserve=("a dog", "two cats")), "names the erased concept"),
    ({}, EditRequest(concepts=("cat",)), "retain prompts"),
    ({}, EditRequest(concepts=("cat",), guide="dog", preserve=("a tree",)), "guide"),
    ({"null_space": 0.9}, REQUEST, "modules x or kv"),  # the text encoder (the default modules)
    ({"modules": "x", "null_space": 1.0}, REQUEST, "below 1"),
    ({"modules": "x", "null_space": -0.1}, REQUEST, "null_space"),
    ({"erase_batch": 0}, REQUEST, "erase_batch"),
    ({"attack_bank": 0}, REQUEST, "attack_bank"),
    ({"attack_batch": 0}, REQUEST, "attack_batch"),
    ({"sample_from": "edited"}, REQUEST, "sample_from"),
    ({"attack_placement": "middle"}, REQUEST, "attack_placement"),
    ({"retain_embeddings": -1.0}, REQUEST, "retain_embeddings"),
    ({"retain_embeddings": float("nan")}, REQUEST, "retain_embeddings"),
    ({"retain_embeddings": 1e30}, REQUEST, "retain_embeddings"),
    ({"modules": "x", "retain_embeddings": 1.0}, REQUEST, "needs --modules text-encoder"),
]


@pytest.mark.parametrize(("options", "request_", "message"), BAD)
def test_bad_input_is_refused_and_nothing_changes(sd, options, request_, message):
    before = snapshot(sd)
    with pytest.raises(ValueError, match=message):
        fit(sd, "advunlearn", request_, config(**options), progress=False)
    assert_state(sd, before)


def test_sdxl_is_refused(sdxl):
    with pytest.raises(ValueError, match="two"):
        fit(sdxl, "advunlearn", REQUEST, config(), progress=False)


def test_gradient_checkpointing_gives_the_same_edit(sd):
    """Recomputing the UNet's activations in backward changes memory, not the result (float tolerance)."""
    plain = fit(sd, "advunlearn", REQUEST, config(), seed=0, progress=False)
    checkpointed = fit(sd, "advunlearn", REQUEST, config(gradient_checkpointing=True), seed=0, progress=False)
    assert not sd.unet.is_gradient_checkpointing
    assert_same_edit(plain, checkpointed)


def test_null_space_keeps_the_retain_and_empty_prompts_keys_and_values(sd):
    """AlphaEdit's projection: every key/value change maps the retain and empty prompts' token embeddings (the
    directions holding the share) to zero, checked against a float64 eigendecomposition of their Gram matrix;
    the concept's own keys still move, and the query/output projections are left free."""
    from concept_edit.models.conditioning import encode_conditions

    dim = sd.text_encoder.config.hidden_size
    embeds = encode_conditions(sd, ["", *REQUEST.preserve]).embeds.double().reshape(-1, dim)
    values, vectors = np.linalg.eigh((embeds.T @ embeds).numpy())  # independent of the SVD the code uses
    order = np.argsort(values)[::-1]
    energy = np.cumsum(values[order]) / values.sum()
    k = int((energy < 0.999).sum()) + 1
    held = torch.from_numpy(vectors[:, order[:k]].copy())  # dim x k
    edit = fit(sd, "advunlearn", REQUEST, config(modules="x", null_space=0.999), progress=False)
    assert edit.manifest["stats"]["null_space_rank"] == k < embeds.shape[1]
    concept = encode_conditions(sd, ["cat"]).embeds.double().reshape(-1, embeds.shape[1])
    kv = [c for c in edit.changes() if ".to_k." in c.target or ".to_v." in c.target]
    assert kv and any(".to_q." in c.target or ".to_out." in c.target for c in edit.changes())
    for change in kv:
        delta = change.delta.double()
        assert (delta @ held).abs().max() <= 1e-5 * delta.abs().max()
        assert (delta @ concept.T).abs().max() > 1e-3 * delta.abs().max() * concept.norm(dim=1).max()
    free = fit(sd, "advunlearn", REQUEST, config(modules="x"), progress=False)  # without: the held directions move
    assert max((c.delta.double() @ held).abs().max() / c.delta.abs().max() for c in free.changes()
               if ".to_k." in c.target or ".to_v." in c.target) > 1e-2  # fmt: skip


@pytest.mark.parametrize("erase_plain", [False, True])
def test_erase_plain_adds_the_plain_concept_to_each_adversarial_erasure_step(sd, monkeypatch, erase_plain):
    """Warm-up steps train on the plain prompt; after them each step trains on [delta, c], and with
    --erase-plain on the plain prompt too, on the same samples."""
    calls, values, real = [], [], adv._Trainer.erase_loss

    def erase_loss(self, pool, i, delta):
        calls.append((i.tolist(), delta is None))
        values.append(real(self, pool, i, delta))
        return values[-1]

    monkeypatch.setattr(adv._Trainer, "erase_loss", erase_loss)
    edit = fit(sd, "advunlearn", REQUEST, config(erase_plain=erase_plain), progress=False)
    # the last step's loss (final_loss over 6 iterations is the last one) is the sum of its erasure losses
    last = values[-2] + values[-1] if erase_plain else values[-1]
    assert edit.manifest["stats"]["final_loss"] == pytest.approx(last.item(), rel=1e-6)
    plain = [(i, True) for i, _ in calls]
    assert [c[1] for c in calls[:2]] == [True, True]  # the two warm-up steps
    if erase_plain:
        assert len(calls) == 2 + 2 * 4
        assert calls[2::2] == [(i, False) for i, _ in calls[2::2]] and calls[3::2] == plain[2::2]
    else:
        assert len(calls) == 6 and not any(c[1] for c in calls[2:])


def test_retain_embeddings_holds_the_empty_and_retain_prompts_text_embeddings(sd):
    """The text-embedding retain loss is the relative mean square of the trained encoder's output against the
    original's for "" and every retain prompt (checked against the pipeline's own encode_prompt, float64), and a
    fit with it moves those embeddings less than the same fit without it."""
    from concept_edit.models.conditioning import encode_conditions

    prompts = ["", *REQUEST.preserve]
    original = encode_conditions(sd, prompts).embeds.double()
    stack, tuned, tr = trainer(sd, config(retain_embeddings=1.0))
    with stack:
        assert tr.held_loss().item() == 0.0
        with torch.no_grad():
            for p in tuned.parameters:
                p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        moved = encode_conditions(sd, prompts).embeds.double()
        expected = ((moved - original) ** 2).mean() / (original**2).mean()
        assert float(expected) > 1e-4
        torch.testing.assert_close(tr.held_loss().double(), expected, rtol=1e-4, atol=0)

    def drift(edit):
        with applied(sd, edit):
            return float(((encode_conditions(sd, prompts).embeds.double() - original) ** 2).mean())

    rows_seen, real_held = [], adv._Trainer.held_loss

    def held_loss(self, rows=None):
        rows_seen.append(rows.tolist())
        return real_held(self, rows)

    for mode in ("reg", "iter"):
        cfg = {"lr": 1e-2, "iterations": 8, "retain_mode": mode, "retain_batch": 2}
        free = fit(sd, "advunlearn", REQUEST, config(**cfg), seed=0, progress=False)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(adv._Trainer, "held_loss", held_loss)
            held = fit(sd, "advunlearn", REQUEST, config(retain_embeddings=100.0, **cfg), seed=0, progress=False)
        assert drift(held) < 0.5 * drift(free)
    # every step holds the empty prompt (row 0) and the step's two retain prompts (rows 1.. of ["", *preserve])
    assert len(rows_seen) == 16 and all(r[0] == 0 and len(r) == 3 and set(r[1:]) <= {1, 2} for r in rows_seen)
    assert {x for r in rows_seen for x in r[1:]} == {1, 2}


def test_null_space_holding_every_direction_is_refused_before_training(sd):
    from concept_edit.methods.advunlearn.null_space import KeyValueProjection

    dim = sd.text_encoder.config.hidden_size
    full_rank = torch.randn(4, 3 * dim, dim, generator=torch.Generator().manual_seed(0))
    keys = adv.trained_parameters(sd, "kv")
    with pytest.raises(ValueError, match=f"holds all {dim} directions"):
        KeyValueProjection(sd, None, keys, full_rank, 1 - 1e-12)


def test_null_space_holds_a_key_value_bias_where_the_model_has_one(sd):
    """SD's key/value projections have no bias; a model whose do gets them held at their original value under
    --null-space (a bias change would move every prompt's keys), while they train without it."""
    torch.manual_seed(0)
    for name, module in list(sd.unet.named_modules()):
        if name.endswith("attn2"):
            for proj in ("to_k", "to_v"):
                old = getattr(module, proj)
                new = torch.nn.Linear(old.in_features, old.out_features, bias=True)
                with torch.no_grad():
                    new.weight.copy_(old.weight)
                    new.bias.normal_(0, 0.1)
                setattr(module, proj, new)
    biases = lambda edit: [c for c in edit.changes() if c.target.endswith(("to_k.bias", "to_v.bias"))]  # noqa: E731
    free = fit(sd, "advunlearn", REQUEST, config(modules="x"), progress=False)
    assert biases(free) and max(c.delta.abs().max() for c in biases(free)) > 1e-6
    held = fit(sd, "advunlearn", REQUEST, config(modules="x", null_space=0.999), progress=False)
    assert all(c.delta.abs().max() == 0 for c in biases(held))  # no change, or a change of exactly zero
    weights = [c for c in held.changes() if c.target.endswith(("to_k.weight", "to_v.weight"))]
    assert weights and max(c.delta.abs().max() for c in weights) > 1e-6


@pytest.mark.parametrize("placement", ["prefix", "alone"])
def test_attack_placement_alone_makes_the_free_tokens_the_whole_prompt(sd, placement):
    """alone: the adversarial prompt is [start, free tokens, end], the concept's words left out, so two concepts
    give the same conditioning for the same tokens; prefix (official): the tokens stand before each concept's
    words. A fit runs either way."""
    two = EditRequest(concepts=("cat", "bird"), preserve=REQUEST.preserve)
    cfg = config(attack_placement=placement, attack_tokens=4)
    stack, _, tr = trainer(sd, cfg, two)
    with stack:
        ids, mask, first = tr.adversarial
        start, end = sd.tokenizer.bos_token_id, sd.tokenizer.eos_token_id
        concept_ids = set(sd.tokenizer("cat bird", add_special_tokens=False).input_ids)
        assert first.tolist() == [1, 1]
        words = {int(i) for i in ids[:, 5:][mask[:, 5:].bool()]} - {end}
        if placement == "alone":
            assert mask.sum(1).tolist() == [6, 6]
            assert ids[:, 0].tolist() == [start] * 2 and ids[:, 5].tolist() == [end] * 2
            assert not words & concept_ids
        else:
            assert words == concept_ids
        free = torch.randn(1, 4, sd.text_encoder.config.hidden_size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            cat, bird = tr.encode("adversarial", torch.tensor([0, 1]), free).chunk(2)
        assert torch.equal(cat, bird) == (placement == "alone")
    edit = fit(sd, "advunlearn", REQUEST, cfg, progress=False)
    assert edit.manifest["config"]["attack_placement"] == placement
