"""Erased Stable Diffusion (ESD): fine-tuning toward negative guidance from the model's own knowledge.

`config` (options, light), `fit` (ESD-x, ESD-u, the training loop).
"""
