"""The digits judge: a two-layer CNN (as the Selective Amnesia paper's "simple two-layer CNN") for 8x8 digits.

It decides which digit a generated image shows (the share of samples of a class read as that class, the
forgetting metric of the paper) and gives the feature space for a Frechet distance between generated and
real digits (`features`, 128-d, the penultimate layer).
"""

from __future__ import annotations

import torch
from torch import nn

FEATURE_DIM = 128


class DigitsClassifier(nn.Module):
    """conv 3x3 (32) -> ReLU -> conv 3x3 (64) -> ReLU -> max-pool 2 -> dense 128 -> ReLU -> dense 10."""

    def __init__(self, num_classes: int = 10, channels: tuple[int, int] | list[int] = (32, 64)) -> None:
        super().__init__()
        self.config = {"num_classes": num_classes, "channels": list(channels)}
        c1, c2 = channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(0.25),
            nn.Linear(c2 * 4 * 4, FEATURE_DIM),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.25), nn.Linear(FEATURE_DIM, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, 128] of images [B, 1, 8, 8] in [0, 1]."""
        return self.body(x * 2 - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [B, 10] of images [B, 1, 8, 8] in [0, 1]."""
        return self.head(self.features(x))

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities [B, 10] (softmax of the logits)."""
        return self(x).softmax(dim=-1)
