"""What an edit file's manifest must hold, checked without torch: `Edit.load` and the CLI's `inspect` (which
reads only the file's JSON header, so that it starts in a fraction of a second) share these checks."""

from __future__ import annotations

from typing import Any

FORMAT = "concept-edit/2"
EDIT_FILENAME = "edit.safetensors"
META_KEY = "concept_edit"
CHANGE_KINDS = ("dense", "low_rank", "sparse", "activation")  # concept_edit.edit.changes.KINDS (a test keeps them)
REQUIRED = {"format": str, "method": str, "base_hash": str, "changes": list}
OPTIONAL = {"concepts": list, "stats": dict, "config": dict, "request": dict}


def check_manifest(manifest: Any, error: type[Exception] = ValueError, prefix: str = "") -> None:
    """Raise `error` (its message starting with `prefix`) unless `manifest` is an edit manifest of this format."""
    if not isinstance(manifest, dict):
        raise error(f"{prefix}the edit manifest must be a JSON object")
    if manifest.get("format") == "concept-edit/1":
        raise error(f"{prefix}written by concept-edit 0.1 (format concept-edit/1); create the edit again")
    if manifest.get("format") != FORMAT:
        raise error(f"{prefix}unsupported edit format {manifest.get('format')!r} (expected {FORMAT})")
    for key, kind in REQUIRED.items():
        if not isinstance(manifest.get(key), kind):
            raise error(f"{prefix}the manifest field {key!r} is missing or not a {kind.__name__}")
    if not manifest["changes"]:
        raise error(f"{prefix}the edit lists no change")
    for key, kind in OPTIONAL.items():
        if key in manifest and not isinstance(manifest[key], kind):
            raise error(f"{prefix}the manifest field {key!r} must be a {kind.__name__}")
    if not all(isinstance(c, str) for c in manifest.get("concepts", [])):
        raise error(f"{prefix}the manifest field 'concepts' must be a list of strings")


def check_change_kind(info: Any, error: type[Exception] = ValueError) -> str:
    """The kind of one change entry of the manifest, which must be a JSON object of a kind this library knows."""
    if not isinstance(info, dict):
        raise error(f"a change entry must be a JSON object, got {type(info).__name__}")
    kind = info.get("kind")
    if kind not in CHANGE_KINDS:
        raise error(
            f"unknown change kind {kind!r} for {info.get('target')!r}; this library knows {', '.join(CHANGE_KINDS)} "
            "(the file may come from a newer concept-edit)"
        )
    return kind
