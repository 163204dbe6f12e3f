"""FID's Inception-v3 pool3 features (2048-d) through torch-fidelity, the reference FID network in PyTorch
(the TensorFlow FID Inception ported bit-exactly, with TF1's bilinear resize to 299), so Frechet distances
on these features are the FID the papers report (UCE Table 4, CAD Table 2, SA).

torch-fidelity imports torchvision, and PyPI's torchvision does not import beside the CPU torch wheel the
README installs ("operator torchvision::nms does not exist"): it lives in the optional `eval` extra, is
imported only here, and a missing or broken install gives one error that says what to do. The network's
weights are fetched by torch-fidelity from its GitHub release into torch's hub cache on first use.
"""

from __future__ import annotations

import numpy as np

BATCH = 32
FEATURE = "2048"  # pool3


def _extractor_class():
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except Exception as err:  # noqa: BLE001 - ImportError, or torchvision's RuntimeError when it mismatches torch
        raise ValueError(
            "FID's Inception features need torch-fidelity and a torchvision built for your torch "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Install "
            "`pip install 'concept-edit[eval]'` with the torchvision matching your torch (from the same index "
            "as torch, e.g. https://download.pytorch.org/whl/cpu), or use `--features clip`"
        ) from None
    return FeatureExtractorInceptionV3


class InceptionFeatures:
    name = "inception"

    def __init__(self, network=None) -> None:
        if network is None:
            cls = _extractor_class()
            try:
                network = cls("inception-v3-compat", [FEATURE])
            except OSError as err:  # offline, weights not in torch's hub cache (URLError is an OSError)
                from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

                raise ValueError(
                    f"cannot fetch the FID Inception weights ({err}): download {URL_INCEPTION_V3} into "
                    "$TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints), or use `--features clip`"
                ) from None
        self.network = network.eval()

    @classmethod
    def from_spec(cls, argument: str | None) -> InceptionFeatures:
        if argument:
            raise ValueError(f"the inception features take no argument, got {argument!r}")
        return cls()

    def protocol(self) -> dict:
        from importlib.metadata import version

        return {
            "features": self.name,
            "network": "torch-fidelity inception-v3-compat pool3 (2048-d)",
            "torch-fidelity": version("torch-fidelity"),
        }

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, len(images), BATCH):
                batch = torch.from_numpy(np.ascontiguousarray(images[start : start + BATCH])).permute(0, 3, 1, 2)
                out.append(self.network(batch)[0].double().numpy())  # uint8 in, resized to 299 inside
        return np.concatenate(out) if out else np.zeros((0, 2048))
