"""Image feature extractors for Frechet distances and the feature-distance image change, by name.

`make_features("shapes-oracle" | "inception" | "clip[:<hub id>]")` returns a callable
`(N, H, W, 3) uint8 -> (N, d) float64` with `name` and `protocol()`. A suite names its extractor
(`Suite.features`): the oracle's 128-d features for ShapesSD (the FID analogue of this world), Inception-v3
pool features for real models' FID (as the papers report it), CLIP image embeddings as a torchvision-free
alternative. Each extractor is imported only when asked for.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

FEATURES = {
    "shapes-oracle": "concept_edit.evaluation.features:OracleFeatures",
    "inception": "concept_edit.evaluation.inception:InceptionFeatures",
    "clip": "concept_edit.evaluation.judges.clip:ClipFeatures",
}


class FeatureExtractor(Protocol):
    name: str

    def protocol(self) -> dict: ...

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


def make_features(spec: str) -> FeatureExtractor:
    from concept_edit.evaluation.judges import load_named

    return load_named(FEATURES, spec, "feature extractor")


class OracleFeatures:
    """The shapes oracle's 128-d penultimate features."""

    name = "shapes-oracle"

    def __init__(self) -> None:
        from concept_edit.shapes.oracle import Oracle

        self.oracle = Oracle.load()

    @classmethod
    def from_spec(cls, argument: str | None) -> OracleFeatures:
        if argument:
            raise ValueError(f"the shapes-oracle features take no argument, got {argument!r}")
        return cls()

    def protocol(self) -> dict:
        from concept_edit.shapes.oracle import WEIGHTS

        return {"features": self.name, "weights": WEIGHTS.name}

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.oracle.read(images).features.astype(np.float64)
