"""scikit-learn's bundled handwritten digits (1797 images, 8x8, 10 classes) as tensors, in a fixed split.

The data ships with scikit-learn (no download). The split is stratified 75/25 with a fixed seed, so every
model, test and evaluation sees the same train and test images. scikit-learn is imported lazily: only
training and evaluation need the data, loading a shipped model does not.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

CLASSES = tuple("0123456789")
IMAGE_SIZE = 8
TEST_FRACTION = 0.25
SPLIT_SEED = 0
SPLITS = ("train", "test")


@lru_cache(maxsize=1)
def _split_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images, digits.target, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=digits.target
    )
    return {"train": (x_train, y_train), "test": (x_test, y_test)}


def load_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images float32 [N, 1, 8, 8] in [0, 1] (pixel / 16) and labels int64 [N] of the "train" or "test" split."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    images, labels = _split_arrays()[split]
    x = torch.from_numpy(images.astype(np.float32) / 16.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))
