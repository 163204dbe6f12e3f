"""Apply, revert and compose edits: one path for every kind of change.

* `apply(pipe, *edits)` applies edits in order, in place, all or nothing: an edit whose base hash matches
  neither the pipeline's current tensors nor their unedited originals is refused (it was made for another
  model), and a change that fails while being applied (a corrupted tensor, an index out of range) takes
  back everything applied before it;
* `revert(pipe)` restores the exact original bytes and removes the hooks;
* `applied(pipe, *edits)` is a context manager that always reverts, also when its block raises;
* `compose(pipe, *edits)` merges edits into one: dense deltas summed, low-rank factors concatenated,
  sparse entries united (a later value wins); anything else is kept in order.

Applying keeps a copy of only the tensors (or, for sparse changes, the entries) it changes; each tensor's
digest is computed once and cached on the pipeline.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

from concept_edit.edit.changes import (
    WEIGHT_KINDS,
    Change,
    DenseDelta,
    EditError,
    LowRankDelta,
    SparseSet,
)
from concept_edit.edit.file import Edit, _check_target, base_keys, get_module
from concept_edit.edit.state import (
    AppliedEdit,
    combine,
    current_digest,
    mark_written,
    pristine_digest,
    remember_digest,
    state_of,
)
from concept_edit.models.loading import model_info
from concept_edit.models.targets import get_parameter

log = logging.getLogger(__name__)


def applied_edits(pipe) -> list[str]:
    """Names of the edits currently applied to `pipe`, oldest first."""
    return [a.name for a in state_of(pipe).stack]


def _apply_one(pipe, edit: Edit, allow_repeat: bool) -> None:
    made_for = edit.manifest.get("base_model")
    if not allow_repeat and any(a.identity == edit.identity for a in state_of(pipe).stack):
        raise EditError(
            f"edit {edit.name} is already applied; applying it again would double it "
            "(pass --allow-repeat, or allow_repeat=True, if that is what you want)"
        )
    for entry in edit.entries:
        _check_target(pipe, entry, f"edit {edit.name} was made for {made_for!r}")
    state = state_of(pipe)
    tuned = sorted({e.target for e in edit.entries if e.kind in WEIGHT_KINDS} & state.tuning)
    if tuned:
        raise EditError(f"cannot apply {edit.name}: {tuned[0]} is being fine-tuned inside a trainable() block")
    keys = base_keys(pipe, edit.entries)
    params = {k: get_parameter(pipe, k) for k in keys}
    current = {k: current_digest(pipe, k, p) for k, p in params.items()}
    original = {k: pristine_digest(pipe, k, p) for k, p in params.items()}
    if edit.manifest.get("base_hash") not in (combine(current), combine(original)):
        spec = model_info(pipe).spec
        if any(p.dtype == torch.bfloat16 for p in params.values()):
            raise EditError(
                f"edit {edit.name} (made for {made_for!r}) does not match this model: it is loaded in bfloat16, "
                "which rounds weights differently from the float16 precision edits are matched at; load it in "
                "float32 or float16 (or make the edit on the bfloat16 model)"
            )
        if made_for != spec:
            raise EditError(
                f"edit {edit.name} was made for a different base model ({made_for!r}); its weights do not match "
                f"this model's ({spec!r}). Refusing to apply it."
            )
        raise EditError(
            f"edit {edit.name} was made for {made_for!r}, but this copy's weights differ: they were changed since "
            "(fine-tuned, or edited outside concept-edit), or the edit was made on top of another edit that is "
            "not applied"
        )
    written = {e.target for e in edit.entries if e.kind in WEIGHT_KINDS}
    record = AppliedEdit(edit.name, [], current, written, edit.identity)
    try:
        with torch.no_grad():
            for change in edit.changes():  # a stored edit's tensors are read here, one change at a time
                if change.kind in WEIGHT_KINDS:
                    param = params[change.target]
                    change.apply_(param, record.undo)
                    mark_written(pipe, change.target, param)
                else:
                    record.undo.append(change.install(get_module(pipe, change.target)))
    except BaseException:
        _undo(pipe, record)
        raise
    state.stack.append(record)


def _undo(pipe, record: AppliedEdit) -> None:
    with torch.no_grad():
        for undo in reversed(record.undo):
            undo.run()
    for key in record.targets:  # restored to the bytes they had before this edit: their digest is known
        param = get_parameter(pipe, key)
        mark_written(pipe, key, param)
        remember_digest(pipe, key, param, record.digests_before[key])


def apply(pipe, *edits: Edit, allow_repeat: bool = False) -> None:
    """Apply `edits` in order. All or nothing: on any refusal the pipeline is left as it was.

    The same edit twice (the same file, or the same object) is refused unless `allow_repeat`.
    """
    done = 0
    try:
        for edit in edits:
            _apply_one(pipe, edit, allow_repeat)
            done += 1
    except BaseException:
        revert(pipe, done)
        raise
    for edit in edits:  # name the files a user asked for; in-memory edits (debias steps) stay quiet
        log.log(logging.INFO if edit.source else logging.DEBUG, "applied %s", edit.name)


def revert(pipe, count: int | None = None) -> None:
    """Undo the last `count` applied edits (all by default): exact original tensors, hooks removed."""
    state = state_of(pipe)
    stack = state.stack
    count = len(stack) if count is None else count
    tuned = sorted(
        {k for record in stack[len(stack) - min(count, len(stack)) :] for k in record.targets} & state.tuning
    )
    if tuned:
        raise EditError(f"cannot revert while {tuned[0]} is being fine-tuned inside a trainable() block")
    for _ in range(min(count, len(stack))):
        _undo(pipe, stack[-1])  # popped only once undone: an interrupted revert can be run again
        stack.pop()


@contextlib.contextmanager
def applied(pipe, *edits: Edit, allow_repeat: bool = False) -> Iterator[None]:
    """`with applied(pipe, edit): ...`: the edits hold inside the block and are always reverted after it."""
    apply(pipe, *edits, allow_repeat=allow_repeat)
    try:
        yield
    finally:
        revert(pipe, len(edits))


# -- compose ---------------------------------------------------------------------------------------------------
def _merge(first: Change, second: Change) -> Change | None:
    """One change equal to `first` then `second` on the same target, where the maths allows; else None."""
    if first.kind != second.kind:
        return None
    if isinstance(first, DenseDelta):
        wide = torch.promote_types(torch.promote_types(first.delta.dtype, second.delta.dtype), torch.float32)
        return DenseDelta(first.target, (first.delta.to(wide) + second.delta.to(wide)).to(first.delta.dtype))
    if isinstance(first, LowRankDelta):
        wide = torch.promote_types(first.up.dtype, second.up.dtype)
        up = torch.cat([first.up.to(wide), second.up.to(wide)], 1)
        down = torch.cat([first.down.to(wide), second.down.to(wide)])
        return LowRankDelta.compact(first.target, up, down, first.shape)
    if isinstance(first, SparseSet):
        indices = torch.cat([first.indices.long(), second.indices.long()])
        values = torch.cat([first.values, second.values.to(first.values.dtype)])
        return SparseSet.of(first.target, first.shape, indices, values)
    return None  # two projections: kept in order (they commute only when their subspaces are orthogonal)


def compose(pipe, *edits: Edit, allow_repeat: bool = False) -> Edit:
    """Merge edits (each made for `pipe`'s base or for the result of the ones before it) into one edit."""
    if not edits:
        raise EditError("compose needs at least one edit")
    with applied(
        pipe, *edits, allow_repeat=allow_repeat
    ):  # validates each edit against the running state; restores pipe after
        pass
    merged: list[Change] = []
    latest: dict[str, int] = {}  # target -> index in `merged` of the last change on it
    for edit in edits:
        for change in edit.changes():
            at = latest.get(change.target)
            combined = _merge(merged[at], change) if at is not None else None
            if combined is not None:
                merged[at] = combined
            else:
                latest[change.target] = len(merged)
                merged.append(change)
    components = [{k: e.manifest.get(k) for k in ("method", "concepts", "config", "request", "seed")} for e in edits]
    concepts = [c for e in edits for c in e.manifest.get("concepts", [])]
    return Edit.create(
        pipe,
        merged,
        method="compose",
        config={"components": components},
        request={"concepts": concepts},
        seed=None,
        keep_dtype=True,  # each part keeps the precision it was stored in
    )
