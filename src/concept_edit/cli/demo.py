"""The demo: erase "circle" from ShapesSD with UCE and measure what changed.

    concept-edit demo --out demo/

1. evaluate ShapesSD on the shapes-objects suite (target: circle)          -> demo/before.json
2. fit UCE: erase "circle" (towards the empty prompt), preserve the other objects -> demo/edit.safetensors
3. evaluate again with the edit, on the same prompts and seeds            -> demo/after.json
4. the same before/after on the shapes-paraphrase suite ("a disc", "a round shape": words the edit was
   not given)                                                              -> demo/*_paraphrase.json
5. one HTML report with before/after grids                                -> demo/report.html
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from concept_edit.evaluation.evaluate import evaluate
from concept_edit.evaluation.report import summary_table, write_report
from concept_edit.evaluation.suites import get_suite
from concept_edit.io import atomic_folder, write_json
from concept_edit.methods import EditRequest, fit
from concept_edit.models import load_pipeline

log = logging.getLogger(__name__)


def run_demo(out: Path, n: int = 16, seed: int = 0, concept: str = "circle", *, replace: bool = False) -> dict:
    """Write the demo's files into `out`, all at once at the end (an interrupted demo leaves nothing behind)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder")
    started = time.perf_counter()
    pipe = load_pipeline("shapes", device="cpu")
    objects = get_suite("shapes-objects", n, seed)
    paraphrase = get_suite("shapes-paraphrase", max(4, n // 2), seed)
    with atomic_folder(out, replace=replace) as work:
        print(f"1/4 evaluating ShapesSD on {objects.name} ({len(objects.entries)} images) ...")
        before, before_images = evaluate(pipe, objects, target=concept)
        before_para, before_para_images = evaluate(pipe, paraphrase, target=concept)
        write_json(work / "before.json", before)
        write_json(work / "before_paraphrase.json", before_para)

        print(f"2/4 UCE: erasing {concept!r}, preserving the other objects ...")
        request = EditRequest(concepts=(concept,), preserve=tuple(o for o in objects.concepts if o != concept))
        edit = fit(pipe, "uce", request, seed=seed)
        edit_size = edit.save(work / "edit.safetensors").stat().st_size
        edit.source = str(out / "edit.safetensors")  # where it will be once the folder is in place

        print("3/4 evaluating the edited model on the same prompts and seeds ...")
        after, _ = evaluate(pipe, objects, edits=[edit], target=concept, baseline_images=before_images)
        after_para, _ = evaluate(pipe, paraphrase, edits=[edit], target=concept, baseline_images=before_para_images)
        write_json(work / "after.json", after)
        write_json(work / "after_paraphrase.json", after_para)

        print("4/4 writing the report ...")
        names = ["before.json", "after.json", "before_paraphrase.json", "after_paraphrase.json"]
        write_report([work / name for name in names], work / "report.html")
    print()
    print(f"{objects.name}: erasing {concept!r} with UCE")
    print(summary_table([before, after]))
    print()
    print(f"{paraphrase.name}: synonyms the edit was not given")
    print(summary_table([before_para, after_para]))
    print()
    print(f"edit: {out / 'edit.safetensors'} ({edit_size / 1024:.0f} KiB, {len(edit.entries)} changes)")
    print(f"report: {out / 'report.html'}")
    print(f"done in {time.perf_counter() - started:.0f} s")
    return {"before": before, "after": after, "edit": str(out / "edit.safetensors"), "report": str(out / "report.html")}
