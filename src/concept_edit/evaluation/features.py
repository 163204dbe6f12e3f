"""Image feature extractors for Frechet distances and the feature-distance image change, by name.

`make_features("inception" | "clip[:<hub id>]")`, or a world's own ("shapes-oracle"), returns a callable
`(N, H, W, 3) uint8 -> (N, d) float64` with `name` and `protocol()`. A suite names its extractor
(`Suite.features`): the oracle's 128-d features for ShapesSD (the FID analogue of this world), Inception-v3
pool features for real models' FID (as the papers report it), CLIP image embeddings as a torchvision-free
alternative. Each extractor is imported only when asked for.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

FEATURES = {
    "inception": "concept_edit.evaluation.inception:InceptionFeatures",
    "clip": "concept_edit.evaluation.judges.clip:ClipFeatures",
}


class FeatureExtractor(Protocol):
    name: str

    def protocol(self) -> dict: ...

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


def make_features(spec: str) -> FeatureExtractor:
    from concept_edit.evaluation.judges import load_named
    from concept_edit.worlds import registered

    return load_named({**FEATURES, **registered("feature_extractors")}, spec, "feature extractor")
