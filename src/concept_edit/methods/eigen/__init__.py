"""Eigen-direction erasure as a method on diffusion pipelines (the statistics and erasers are `concept_edit.eigen`).

`config` (options, light), `fit`.
"""
