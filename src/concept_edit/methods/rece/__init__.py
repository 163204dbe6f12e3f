"""RECE (Gong et al., ECCV 2024): UCE's closed form, then rounds that derive the embedding which regenerates the
erased concept under the current edit and erase it too.

`config` (options, light), `fit` (the rounds, on UCE's closed form in `methods/uce/closed_form.py`).
"""
