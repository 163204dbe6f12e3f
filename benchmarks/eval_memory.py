"""Peak memory of `evaluate` against the number of images: it must not grow with the suite (issue 29).

    python benchmarks/eval_memory.py [--small 256] [--large 2048] [--chunk-size 256] [--steps 5] [--json]

ShapesSD's shapes-objects suite (8 objects) of `--small` and of `--large` images, with a UCE edit of "circle"
applied, so every accumulator runs: the edited images and the unedited baseline drawn, the oracle's answers,
Frechet statistics against true renders and the unedited images, the image change and the thumbnails. Each run
is its own fresh process (as `concept-edit evaluate` is: `keep_images=False`); after a warm-up evaluation of one
image per object (so lazy loads are paid), the kernel's peak resident size is reset (`/proc/self/clear_refs`)
and read again after the measured evaluation (VmHWM). `peak_*_bytes` is that peak; `growth_*_bytes` is the peak
minus the resident size just before the measured call (what evaluating itself held). `ratio` = peak_large /
peak_small (target <= 1.1). The same two sizes are measured with the whole suite in one chunk and the images
kept (what `evaluate` did before it streamed: `one_chunk`), so the table shows what streaming saves. Peaks are
measured on this machine's kernel; they do not depend on the CPU load beside them. The images are drawn with
`--steps` sampling steps (5; ShapesSD's own is 25): what is held between chunks does not depend on the steps, and
4,608 images at 25 steps take most of an hour on one thread.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

OBJECTS = 8  # shapes-objects: one entry per object and seed


def _status() -> tuple[int, int]:
    status = Path("/proc/self/status").read_text()
    return tuple(int(re.search(rf"{key}:\s+(\d+)", status).group(1)) * 1024 for key in ("VmRSS", "VmHWM"))


def child(images: int, chunk_size: int, keep_images: bool, steps: int) -> dict:
    """One measured evaluation in this (fresh) process: {images, peak_bytes, growth_bytes, seconds}."""
    import time

    import torch

    from concept_edit import EditRequest, fit, make_config
    from concept_edit.evaluation import evaluate, get_suite
    from concept_edit.models import load_pipeline

    torch.set_num_threads(1)
    pipe = load_pipeline("shapes", device="cpu")
    edit = fit(pipe, "uce", EditRequest(concepts=("circle",)), make_config("uce"), progress=False)
    warm = get_suite("shapes-objects", n=1, seed=10_000)
    evaluate(pipe, warm, edits=[edit], progress=False, keep_images=False, steps=steps)
    suite = get_suite("shapes-objects", n=images // OBJECTS, seed=0)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident size (VmHWM) to the current one
    before, _ = _status()
    started = time.perf_counter()
    results, kept = evaluate(pipe, suite, edits=[edit], target="circle", progress=False, chunk_size=chunk_size,
                             keep_images=keep_images, steps=steps)  # fmt: skip
    seconds = time.perf_counter() - started
    _, peak = _status()
    return {"images": len(suite.entries), "peak_bytes": peak, "growth_bytes": peak - before,
            "seconds": round(seconds, 1), "circle": results["target_accuracy"],
            "frechet_to_renders": results["frechet_to_renders"], "kept_images": kept is not None}  # fmt: skip


def _run(images: int, chunk_size: int, keep_images: bool, steps: int) -> dict:
    command = [sys.executable, __file__, "--child", str(images), "--chunk-size", str(chunk_size), "--steps", str(steps)]
    command += ["--keep-images"] if keep_images else []
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=256, help="images of the small suite (a multiple of 8)")
    parser.add_argument("--large", type=int, default=2048, help="images of the large suite (a multiple of 8)")
    parser.add_argument("--chunk-size", type=int, default=256, help="evaluate's chunk size (its default: 256)")
    parser.add_argument("--steps", type=int, default=5, help="sampling steps of every image")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--keep-images", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.chunk_size, args.keep_images, args.steps)))
        return
    if min(args.small, args.large) < OBJECTS or args.small % OBJECTS or args.large % OBJECTS:
        parser.error(f"--small and --large must be multiples of {OBJECTS} (one entry per object)")
    rows = {}
    for mode, chunk, keep in (("streaming", args.chunk_size, False), ("one_chunk", 10**9, True)):
        small, large = _run(args.small, chunk, keep, args.steps), _run(args.large, chunk, keep, args.steps)
        rows[mode] = {"small": small, "large": large, "ratio": large["peak_bytes"] / small["peak_bytes"],
                      "growth_ratio": large["growth_bytes"] / max(small["growth_bytes"], 1)}  # fmt: skip
        print(f"{mode:10s} {args.small:5d} images: peak {small['peak_bytes'] / 2**20:7.1f} MiB (evaluate held "
              f"{small['growth_bytes'] / 2**20:6.1f} MiB, {small['seconds']} s); {args.large:5d} images: peak "
              f"{large['peak_bytes'] / 2**20:7.1f} MiB (held {large['growth_bytes'] / 2**20:6.1f} MiB, "
              f"{large['seconds']} s); ratio {rows[mode]['ratio']:.3f}", flush=True)  # fmt: skip
    stream = rows["streaming"]
    out = {"n_small": args.small, "n_large": args.large, "chunk_size": args.chunk_size, "steps": args.steps,
           "peak_small_bytes": stream["small"]["peak_bytes"], "peak_large_bytes": stream["large"]["peak_bytes"],
           "growth_small_bytes": stream["small"]["growth_bytes"], "growth_large_bytes": stream["large"]["growth_bytes"],
           "ratio": stream["ratio"], "rows": rows,
           "protocol": "shapes-objects with a UCE circle edit and its unedited baseline; one process per run, "
                       "one thread; peak = VmHWM reset after a warm-up evaluation"}  # fmt: skip
    print(f"ratio (streaming, {args.large} / {args.small} images): {stream['ratio']:.3f} (target <= 1.1)")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
