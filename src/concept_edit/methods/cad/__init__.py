"""Concept attribution (CAD): scores w * dJ/dw, CAD-Erase and CAD-Amplify.

`config` (options, light), `fit`, `attribution` (the scores), `ablation` (the top entries), `scores` (the score
file), `check` (the first-order approximation check), `images` (images of a concept for Amplify).
"""
