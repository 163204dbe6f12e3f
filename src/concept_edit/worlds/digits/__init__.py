"""The digits world: scikit-learn's 8x8 handwritten digits with a conditional VAE, a class-conditional DDPM
and a digits classifier, small enough to train on a CPU in minutes (the Selective Amnesia experiments in
miniature). `loading.load_digits_model` gives either generator as a pipeline-like `DigitsModel`.
"""

from __future__ import annotations

from concept_edit.worlds.base import World

# Selective Amnesia per model: the official values (appendix B) where they fit this CPU, else set on tuning seeds
# 5000+; the surrogate is uniform noise, as the paper's MNIST/CIFAR runs
AMNESIA = {
    "vae": {"lam": 100.0, "lr": 1e-4, "batch_size": 256, "steps": 10000, "fisher_samples": 50000,
            "replay_samples": 50000, "surrogate_samples": 1000, "fisher_timesteps": None, "fisher_chunk": 250,
            "surrogate": "uniform"},
    # the digits DDPM at the official lambda 10 (and 2000 steps at lr 1e-4) does not forget at all (P("0") stays
    # 1.000, benchmarks/results/amnesia_quality_ddpm_official.json); lambda 0.3 is the strongest of 0.01-10
    # that still forgets on training seed 5000 and probe seeds 5000+ (1: P 0.60; 10: 1.00)
    "ddpm": {"lam": 0.3, "lr": 1e-3, "batch_size": 128, "steps": 300, "fisher_samples": 500,
             "replay_samples": 2000, "surrogate_samples": 1000, "fisher_timesteps": 50, "fisher_chunk": 250,
             "surrogate": "uniform"},
}  # fmt: skip


class DigitsWorld(World):
    name = "digits"
    title = "the digits models"
    model_specs = ("digits-vae", "digits-ddpm")
    text_to_image = False

    def load(self, spec, device, dtype):
        from concept_edit.worlds.digits.loading import load_digits_model

        return load_digits_model(spec, device, dtype)

    def backend(self, method, pipe, **options):
        if method != "amnesia":
            return None
        from concept_edit.worlds.digits.amnesia import DigitsDDPM, DigitsVAE

        return DigitsVAE(pipe) if pipe.kind == "vae" else DigitsDDPM(pipe, **options)

    def method_defaults(self, method, pipe):
        return dict(AMNESIA[pipe.kind]) if method == "amnesia" else {}


WORLD = DigitsWorld()
