"""AdvUnlearn: ESD trained against an inner soft-prompt attack, with a retain loss; text encoder by default.

`config` (options, light), `fit` (the adversarial training loop).
"""
