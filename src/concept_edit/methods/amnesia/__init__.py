"""Selective Amnesia: EWC (Fisher) + generative replay + a surrogate distribution.

`config` (options, light), `fit`, `fisher` (the Fisher estimate and its cache file), `ewc` (the penalty),
`backends` (text-to-image and class-conditional models behind one interface).
"""
