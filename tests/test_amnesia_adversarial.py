"""Selective Amnesia against an inner soft-prompt attack (`--adversarial-steps`): the attack lowers its own loss,
the forget rows after the warm-up are conditioned on [delta, concept] exactly, resume is exact, the in-backward
step is the same run, bad input is refused before anything is drawn."""

import os
import signal

import pytest
import torch
from test_amnesia import FAST, REQUEST, config, tiny_vae_model

from concept_edit import EditRequest, fit, make_inputs
from concept_edit.attacks.encoder import encode_ids, template_ids
from concept_edit.methods.amnesia.adversarial import AdversarialPrompts
from concept_edit.methods.amnesia.backends import TextToImage, backend_for
from concept_edit.models.conditioning import encode_conditions
from concept_edit.training import Interrupted, step_generator

ADV = {"adversarial_steps": 3, "attack_every": 2, "adversarial_warmup": 1, "concept_samples": 2, "steps": 5,
       "fisher_timesteps": 3}  # a Fisher forward has 3 rows, a training step 4 (6 with adversarial rows), an attack 2
PLAIN = {"steps": 5, "fisher_timesteps": 3}  # ADV's run without the attack (its options refused when it is off)


def test_the_inner_attack_lowers_its_own_loss_on_fixed_weights(sd):
    values = {"attack_tokens": 2, "attack_lr": 0.05, "adversarial_steps": 30, "batch_size": 2}
    backend = backend_for(sd, encode_conditions(sd, ["", "a cat"]), steps=2)
    latents = backend.generate(torch.tensor([1, 1]), 0, 35)
    adversary = AdversarialPrompts(sd, backend, ["a cat"], latents, values)
    gen = step_generator(9, 0, 0)  # one fixed set of timesteps and noise to score the tokens on, not the attack's
    x = latents.repeat(16, 1, 1, 1)
    t, noise = backend.draw(x, gen)

    def score(delta):
        with torch.no_grad():
            cond = adversary._encode(torch.zeros(len(x), dtype=torch.long), delta)
            return backend.loss_given(x, cond, t, noise).mean().item()

    start = adversary._random_tokens(0, 0)
    adversary.delta = start.clone()
    adversary.attack(0, 0)
    assert adversary.delta.shape == start.shape and not torch.equal(adversary.delta, start)
    assert score(adversary.delta) < score(start)


def test_after_the_warm_up_more_forget_rows_are_conditioned_on_the_adversarial_prompt(sd, monkeypatch):
    seen = []
    real = TextToImage.loss_given
    batch = FAST["batch_size"]

    def spy(self, x, cond, t, noise):
        if len(x) in (2 * batch, 3 * batch):  # a training step (forget, replay, adversarial rows), not an attack's
            seen.append(cond.embeds.detach().clone())
        return real(self, x, cond, t, noise)

    deltas = []
    real_attack = AdversarialPrompts.attack

    def keep(self, seed, step):
        out = real_attack(self, seed, step)
        deltas.append((step, self.delta.clone()))
        return out

    monkeypatch.setattr(TextToImage, "loss_given", spy)
    monkeypatch.setattr(AdversarialPrompts, "attack", keep)
    edit = fit(sd, "amnesia", REQUEST, config(**ADV), seed=0, progress=False)
    assert [s for s, _ in deltas] == [1, 3]  # after the warm-up, every attack_every steps
    assert edit.manifest["stats"]["attacks"] == 2
    assert [len(e) for e in seen] == [2 * batch] + [3 * batch] * 4  # the warm-up step is plain SA
    ids, mask, first = template_ids(sd, ["{} cat"], 1)
    plain = encode_conditions(sd, ["cat"]).embeds[0]
    for step, embeds in enumerate(seen):
        torch.testing.assert_close(embeds[:batch], plain.expand(batch, -1, -1))  # SA's own forget rows stay plain
        if step == 0:
            continue
        delta = [d for s, d in deltas if s <= step][-1]
        with torch.no_grad():
            expected = encode_ids(sd, ids, mask, delta, first)[0]
        torch.testing.assert_close(embeds[2 * batch :], expected.expand(batch, -1, -1), atol=0, rtol=0)
        assert not torch.equal(expected, plain)


def test_resume_after_ctrl_c_between_attacks_equals_an_uninterrupted_run(sd, tmp_path, monkeypatch):
    cfg = config(**ADV)
    whole = fit(sd, "amnesia", REQUEST, cfg, seed=3, progress=False)
    calls = {"n": 0}
    real_attack = AdversarialPrompts.attack

    def attack_then_ctrl_c(self, seed, step):
        calls["n"] += 1
        if calls["n"] == 1:  # stop after the step of the first attack: the resumed run's attack starts from its tokens
            os.kill(os.getpid(), signal.SIGINT)
        return real_attack(self, seed, step)

    ckpt = tmp_path / "run.ckpt"
    monkeypatch.setattr(AdversarialPrompts, "attack", attack_then_ctrl_c)
    with pytest.raises(Interrupted):
        fit(sd, "amnesia", REQUEST, cfg, make_inputs("amnesia", checkpoint=ckpt), seed=3, progress=False)
    monkeypatch.setattr(AdversarialPrompts, "attack", real_attack)
    assert calls["n"] == 1
    resumed = fit(sd, "amnesia", REQUEST, cfg, make_inputs("amnesia", checkpoint=ckpt, resume=True), seed=3,
                  progress=False)  # fmt: skip
    assert resumed.manifest["stats"] == whole.manifest["stats"]
    for a, b in zip(whole.changes(), resumed.changes(), strict=True):
        torch.testing.assert_close(a.delta, b.delta, atol=0, rtol=0)


def test_stepping_in_backward_is_the_same_adversarial_run(sd):
    """The attack differentiates its tokens only: no weight gradient, so no in-backward step fires during it."""
    standard = fit(sd, "amnesia", REQUEST, config(**ADV), seed=1, progress=False)
    inside = fit(sd, "amnesia", REQUEST, config(**ADV, step_in_backward=True), seed=1, progress=False)
    plain = fit(sd, "amnesia", REQUEST, config(**PLAIN), seed=1, progress=False)
    for a, b in zip(standard.changes(), inside.changes(), strict=True):
        torch.testing.assert_close(a.delta, b.delta, atol=0, rtol=0)
    assert any(not torch.equal(a.delta, c.delta) for a, c in zip(standard.changes(), plain.changes(), strict=True))


def test_bad_adversarial_settings_are_refused_before_anything_is_drawn(sd, sdxl, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="adversarial_steps must be >= 0"):
        config(adversarial_steps=-1)
    with pytest.raises(ValueError, match="adversarial_weight must be > 0"):
        config(adversarial_steps=1, adversarial_weight=0.0)
    with pytest.raises(ValueError, match="attack_tokens 3 does nothing"):  # the attack's options without the attack
        config(attack_tokens=3)
    drawn = []
    monkeypatch.setattr(TextToImage, "generate", lambda *a, **k: drawn.append(1))
    ckpt = make_inputs("amnesia", checkpoint=tmp_path / "c")
    with pytest.raises(ValueError, match="is not below --steps 5: the inner attack would never run"):
        fit(sd, "amnesia", REQUEST, config(**{**ADV, "adversarial_warmup": 5}), ckpt, progress=False)
    with pytest.raises(ValueError, match="two"):
        fit(sdxl, "amnesia", REQUEST, config(**ADV), ckpt, progress=False)
    with pytest.raises(ValueError, match="fewer than the 2 concepts"):
        two = EditRequest(concepts=("cat", "fox"), preserve=REQUEST.preserve)
        fit(sd, "amnesia", two, config(**{**ADV, "concept_samples": 1}), ckpt, progress=False)
    long = EditRequest(concepts=(" ".join(["cat"] * 10),), preserve=REQUEST.preserve)  # 12 of the 16 tokens
    fit_plain = config(**{**PLAIN, "steps": 1})
    with pytest.raises(ValueError, match="does not fit"):
        fit(sd, "amnesia", long, config(**{**ADV, "attack_tokens": 16}), ckpt, progress=False)
    assert not drawn and not list(tmp_path.iterdir())
    monkeypatch.undo()
    fit(sd, "amnesia", long, fit_plain, progress=False)  # plain SA takes that concept: the free tokens did not fit
    digits = tiny_vae_model()  # the digits models draw with their own backend: refused by its kind
    with pytest.raises(ValueError, match="needs a text-to-image model"):
        fit(digits, "amnesia", EditRequest(concepts=("3",)), config(**ADV), ckpt, progress=False)
