"""The oracle classifier: says what a 32x32 shapes-world image shows (object, colour, style, logo).

It plays the part of the papers' ResNet-50 / NudeNet / CLIP judges: the evaluation suites count a
generated image as showing a concept when the oracle says so. Trained by `train_oracle.py` on fresh
renders with blur/noise augmentation so it reads decoded VAE samples as well as clean renders.

Each head can also answer "none" (`NONE`): trained on backgrounds without an object, blends of two
scenes and corrupted renders, so that an erased, off-distribution image is not forced into some object
(a judge forced to answer would partly measure its own guesses).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from concept_edit.worlds.shapes.world import HEADS  # noqa: F401 - what a suite may ask for, re-exported

WEIGHTS = Path(__file__).parent / "weights" / "oracle.safetensors"
NONE = "none"
OUTPUTS = {head: (*labels, NONE) for head, labels in HEADS.items()}  # what a head can answer
FEATURE_DIM = 128


class OracleNet(nn.Module):
    """A small VGG-style CNN; `features` is the 128-d space used for the Frechet distance."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(
            *block(3, 32),
            *block(32, 32),
            nn.MaxPool2d(2),
            *block(32, 64),
            *block(64, 64),
            nn.MaxPool2d(2),
            *block(64, FEATURE_DIM),
            *block(FEATURE_DIM, FEATURE_DIM),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(FEATURE_DIM, len(labels)) for name, labels in OUTPUTS.items()})
        self.logo = nn.Linear(FEATURE_DIM, 1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, 3, 32, 32) floats in [0, 1]."""
        return self.body(images * 2 - 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.features(images)
        out = {name: head(feats) for name, head in self.heads.items()}
        out["logo"] = self.logo(feats).squeeze(-1)
        return out


@dataclass
class OracleReading:
    """Per-image oracle outputs: label names (possibly "none"), their probabilities (one column per label
    of `OUTPUTS`, "none" last), the logo probability and the 128-d features."""

    object: list[str]
    color: list[str]
    style: list[str]
    probs: dict[str, np.ndarray]
    logo_prob: np.ndarray
    features: np.ndarray

    def labels(self, head: str) -> list[str]:
        if head == "logo":
            return ["logo" if p > 0.5 else "no logo" for p in self.logo_prob]
        return getattr(self, head)


def to_tensor(images: np.ndarray | list) -> torch.Tensor:
    """uint8 (N, 32, 32, 3) array, a list of PIL images or of arrays -> float (N, 3, 32, 32) in [0, 1]."""
    if isinstance(images, list):
        images = np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images])
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[1:] != (32, 32, 3):
        raise ValueError(f"the oracle reads (N, 32, 32, 3) images; got shape {arr.shape}")
    tensor = torch.from_numpy(arr.astype(np.float32) / (255.0 if arr.dtype == np.uint8 else 1.0))
    return tensor.permute(0, 3, 1, 2).contiguous()


class Oracle:
    """Load the shipped oracle and read images. `Oracle.load()` is cached per process."""

    def __init__(self, net: OracleNet) -> None:
        self.net = net.eval()

    @staticmethod
    @lru_cache(maxsize=1)
    def load(path: str | None = None) -> Oracle:
        net = OracleNet()
        weights = Path(path) if path else WEIGHTS
        if not weights.exists():
            raise FileNotFoundError(
                f"oracle weights not found at {weights}; train them with "
                "`python -m concept_edit.worlds.shapes.train_oracle`"
            )
        net.load_state_dict(load_file(str(weights)))
        return Oracle(net)

    @torch.no_grad()
    def read(self, images: np.ndarray | list, batch_size: int = 256) -> OracleReading:
        x = to_tensor(images)
        outs: dict[str, list[torch.Tensor]] = {k: [] for k in (*HEADS, "logo", "features")}
        for i in range(0, len(x), batch_size):
            chunk = x[i : i + batch_size]
            feats = self.net.features(chunk)
            for name, head in self.net.heads.items():
                outs[name].append(head(feats).softmax(-1))
            outs["logo"].append(torch.sigmoid(self.net.logo(feats).squeeze(-1)))
            outs["features"].append(feats)
        cat = {k: torch.cat(v).numpy() if v else np.zeros((0,)) for k, v in outs.items()}
        probs = {name: cat[name] for name in HEADS}
        names = (
            {name: [OUTPUTS[name][i] for i in probs[name].argmax(-1)] for name in HEADS}
            if len(x)
            else {name: [] for name in HEADS}
        )
        return OracleReading(names["object"], names["color"], names["style"], probs, cat["logo"], cat["features"])
