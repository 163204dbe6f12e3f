"""Write a full diffusers pipeline folder with edits baked in, for tools that need one.

The folder is written beside its destination and renamed into place only when complete (an interrupted
export leaves nothing behind). It carries a
`concept_edit.json` that names the base model and the edits, so the export can be traced (and a ShapesSD
export is still evaluated with the shapes-world oracle).
"""

from __future__ import annotations

from pathlib import Path

from concept_edit.edit import Edit, applied
from concept_edit.io import atomic_folder, write_json
from concept_edit.models.loading import model_info


def export_pipeline(pipe, edits: list[Edit], out: str | Path, spec: str | None = None, *, force: bool = False) -> Path:
    """Save `pipe` with `edits` applied to the folder `out` (safetensors weights). `pipe` is unchanged.

    `out` must be new or an empty folder, unless `force`, which replaces it once the export is complete.
    """
    out = Path(out)
    hooked = [e.name for e in edits if "activation" in e.kinds]
    if hooked:
        raise ValueError(
            f"{hooked[0]} changes activations through forward hooks, which a diffusers folder cannot hold; "
            "apply it with concept-edit (--edit, or concept_edit.apply) instead of exporting it, or remake it with "
            "--fold where the method offers it (eigen)"
        )
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty folder; choose a new --out or pass --force")
    with atomic_folder(out, replace=force) as tmp:
        with applied(pipe, *edits):
            pipe.save_pretrained(tmp, safe_serialization=True)
        info = model_info(pipe)
        write_json(
            tmp / "concept_edit.json",
            {
                "base_model": spec or info.spec,
                "world": info.world,
                "edits": [
                    {k: e.manifest.get(k) for k in ("method", "concepts", "config", "seed", "base_hash")} for e in edits
                ],
            },
        )
    return out
