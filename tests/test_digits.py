"""The digits world: the conditional VAE, the class-conditional DDPM, the classifier and their loading."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from concept_edit.models.loading import ModelInfo
from concept_edit.worlds.digits import ddpm
from concept_edit.worlds.digits.classifier import DigitsClassifier
from concept_edit.worlds.digits.loading import (
    DIGITS_MODELS,
    DigitsModel,
    load_classifier,
    load_digits_model,
)
from concept_edit.worlds.digits.vae import ConditionalVAE


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one thread is fastest, and two threads on a shared 2-core machine can be 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY_UNET = {
    "block_out_channels": (8, 16),
    "norm_num_groups": 4,
    "attention_head_dim": 8,
}


def tiny_vae(seed: int = 0) -> ConditionalVAE:
    torch.manual_seed(seed)
    return ConditionalVAE(hidden=(16, 12), latent_dim=3)


def tiny_ddpm(seed: int = 0) -> DigitsModel:
    torch.manual_seed(seed)
    return DigitsModel("tiny-ddpm", unet=ddpm.new_unet(**TINY_UNET).eval(), scheduler=ddpm.new_scheduler())


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


LABELS = torch.tensor([0, 3, 9, 3])


# -- VAE ----------------------------------------------------------------------------------------------------
def test_vae_shapes():
    vae = tiny_vae()
    assert vae.neg_elbo(images(4), LABELS).shape == (4,)
    assert vae.decode(torch.zeros(4, 3), LABELS).shape == (4, 1, 8, 8)
    out = vae.sample(LABELS, torch.Generator().manual_seed(0))
    assert out.shape == (4, 1, 8, 8)
    assert out.min() >= 0 and out.max() <= 1


def test_vae_neg_elbo_matches_a_float64_computation():
    vae = tiny_vae()
    x, noise = images(4), torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    got = vae.neg_elbo(x, LABELS, noise)

    v64 = tiny_vae().double()
    one_hot = F.one_hot(LABELS, 10).double()
    stats = v64.encoder(torch.cat([x.double().flatten(1), one_hot], 1))
    mean, logvar = stats[:, :3], stats[:, 3:]
    z = mean + (0.5 * logvar).exp() * noise.double()
    p = torch.sigmoid(v64.decoder(torch.cat([z, one_hot], 1)))
    t = x.double().flatten(1)
    bce = -(t * p.log() + (1 - t) * (1 - p).log()).sum(1)
    kl = -0.5 * (1 + logvar - mean**2 - logvar.exp()).sum(1)
    torch.testing.assert_close(got.double(), bce + kl, rtol=1e-5, atol=1e-4)


def test_vae_neg_elbo_draws_noise_when_none():
    vae = tiny_vae()
    torch.manual_seed(3)
    a = vae.neg_elbo(images(4), LABELS)
    torch.manual_seed(3)
    b = vae.neg_elbo(images(4), LABELS, torch.randn(4, 3))
    torch.testing.assert_close(a, b)


# -- DDPM ---------------------------------------------------------------------------------------------------
def test_ddpm_shapes_and_range():
    model = tiny_ddpm()
    assert model.neg_elbo(images(4), LABELS, torch.Generator().manual_seed(0)).shape == (4,)
    out = model.sample(LABELS, torch.Generator().manual_seed(0), steps=3)
    assert out.shape == (4, 1, 8, 8)
    assert out.min() >= 0 and out.max() <= 1


def test_ddpm_loss_matches_a_direct_computation():
    model = tiny_ddpm()
    x0 = images(4)
    t = torch.tensor([0, 10, 500, 999])
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    got = ddpm.neg_elbo_terms(model.unet, model.scheduler, x0, LABELS, t, noise)

    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)[t].view(-1, 1, 1, 1)
    xt = abar.sqrt() * (2 * x0.double() - 1) + (1 - abar).sqrt() * noise.double()
    with torch.no_grad():
        pred = model.unet(xt.float(), t, class_labels=LABELS).sample
    want = ((pred.double() - noise.double()) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(got.detach().double(), want, rtol=1e-4, atol=1e-5)


def test_ddpm_neg_elbo_uses_given_timesteps_and_the_generator():
    model = tiny_ddpm()
    x = images(4)
    gen = torch.Generator().manual_seed(5)
    t = torch.randint(0, 1000, (4,), generator=gen)
    noise = torch.randn(4, 1, 8, 8, generator=gen)
    want = ddpm.neg_elbo_terms(model.unet, model.scheduler, x, LABELS, t, noise)
    got = model.neg_elbo(x, LABELS, torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, want)
    at_7 = model.neg_elbo(x, LABELS, torch.Generator().manual_seed(5), timesteps=7)
    noise7 = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    want_7 = ddpm.neg_elbo_terms(model.unet, model.scheduler, x, LABELS, torch.full((4,), 7), noise7)
    torch.testing.assert_close(at_7, want_7)


def test_neg_elbo_is_differentiable_in_the_weights():
    model = tiny_ddpm()
    model.neg_elbo(images(2), [1, 2], torch.Generator().manual_seed(0)).sum().backward()
    assert model.unet.conv_in.weight.grad is not None


def test_guidance_zero_is_conditional_sampling():
    model = tiny_ddpm()
    a = model.sample(LABELS, torch.Generator().manual_seed(0), guidance=0.0, steps=2)
    b = model.sample(LABELS, torch.Generator().manual_seed(0), guidance=1e-9, steps=2)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


# -- the container ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["vae", "ddpm"])
def test_sampling_is_deterministic_for_a_seeded_generator(kind):
    model = DigitsModel("tiny", vae=tiny_vae()) if kind == "vae" else tiny_ddpm()
    kw = {} if kind == "vae" else {"steps": 3}
    a = model.sample(LABELS, torch.Generator().manual_seed(7), **kw)
    b = model.sample(LABELS, torch.Generator().manual_seed(7), **kw)
    c = model.sample(LABELS, torch.Generator().manual_seed(8), **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_vae_container_neg_elbo_takes_noise_from_the_generator():
    model = DigitsModel("tiny", vae=tiny_vae())
    got = model.neg_elbo(images(4), LABELS, torch.Generator().manual_seed(4))
    want = model.vae.neg_elbo(images(4), LABELS, torch.randn(4, 3, generator=torch.Generator().manual_seed(4)))
    torch.testing.assert_close(got, want)


def test_bad_labels_are_refused():
    model = DigitsModel("tiny", vae=tiny_vae())
    with pytest.raises(ValueError, match="classes 0..9"):
        model.sample(torch.tensor([10]))
    with pytest.raises(ValueError, match="integer"):
        model.sample(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        model.neg_elbo(images(2), [1])
    assert model.sample([]).shape == (0, 1, 8, 8)


# -- shipped weights ----------------------------------------------------------------------------------------
def test_shipped_models_load_by_name():
    vae = load_digits_model("digits-vae", device="cpu")
    assert vae.kind == "vae" and set(vae.components) == {"vae"}
    assert vae.concept_edit_info == ModelInfo("digits-vae", "digits", 1, 0.0, 8)
    assert isinstance(vae.vae.get_parameter("decoder.0.weight"), torch.nn.Parameter)
    dm = load_digits_model("digits-ddpm", device="cpu")
    assert dm.kind == "ddpm" and set(dm.components) == {"unet"}
    assert dm.concept_edit_info == ModelInfo("digits-ddpm", "digits", 50, 2.0, 8)
    assert dm.unet.config.num_class_embeds == 11
    for model in (vae, dm):
        assert model.device == torch.device("cpu") and model.dtype == torch.float32
        assert model.classes == tuple("0123456789")
        model.set_progress_bar_config(disable=True)
        assert model.sample([1, 2], torch.Generator().manual_seed(0)).shape == (2, 1, 8, 8)
    assert DIGITS_MODELS == ("digits-vae", "digits-ddpm")


def test_loading_does_not_import_sklearn():
    code = (
        "import sys\n"
        "from concept_edit.worlds.digits.loading import load_classifier, load_digits_model\n"
        "load_digits_model('digits-vae', device='cpu'); load_digits_model('digits-ddpm', device='cpu')\n"
        "load_classifier('cpu')\n"
        "assert 'sklearn' not in sys.modules, 'loading imported sklearn'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_unknown_name_is_one_clear_value_error():
    with pytest.raises(ValueError, match="unknown digits model 'digits-gan'.*digits-vae, digits-ddpm"):
        load_digits_model("digits-gan")


def test_shipped_classifier_reads_the_test_split():
    from concept_edit.worlds.digits.data import load_split

    x, y = load_split("test")
    classifier = load_classifier("cpu")
    assert isinstance(classifier, DigitsClassifier) and not classifier.training
    with torch.no_grad():
        assert (classifier(x).argmax(-1) == y).float().mean() >= 0.9
        assert classifier.features(x[:3]).shape == (3, 128)
        torch.testing.assert_close(classifier.probabilities(x[:3]).sum(-1), torch.ones(3))


def test_split_is_fixed_and_stratified():
    from concept_edit.worlds.digits.data import load_split

    x_train, y_train = load_split("train")
    x_test, y_test = load_split("test")
    assert x_train.shape[1:] == (1, 8, 8) and x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert len(x_train) + len(x_test) == 1797 and len(x_test) == 450
    assert x_train.min() >= 0 and x_train.max() <= 1
    assert torch.bincount(y_test).min() >= 43
    with pytest.raises(ValueError, match="unknown split"):
        load_split("validation")
