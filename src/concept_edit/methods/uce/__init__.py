"""Unified Concept Editing (UCE): closed-form edits of cross-attention key/value projections.

`config` (options, light), `fit` (erase / moderate / preserve, eq. 7), `debias` (the debias loop), `closed_form`
(the least-squares solve both use).
"""
