"""Suites for real Stable Diffusion models (filled in by the real-model evaluation work)."""

from __future__ import annotations

REAL_SUITES: dict = {}  # name -> builder(n: int | None, seed: int, argument: str | None) -> Suite
