"""ESD speed on ShapesSD: the official loop and ours, in one run, timed to the same erasure quality.

    python benchmarks/esd_speed.py [--concept circle] [--rung 200] [--max-samples 1600] [--n 16] [--json]

Loops (same objective, same lr, same seed; only how x_t and the targets are produced differs):
* official-trained: the CompVis train-esd.py loop: per iteration one fresh trajectory, sampled with the model
  being trained to a random step k, then two frozen calls at x_t; batch 1;
* official-frozen: the diffusers esd_sd.py loop: the same, sampled with the frozen model;
* ours: pools of 8 trajectories sampled with the frozen model, whose guided steps already hold the targets,
  batch 4 (the defaults);
* ours-trained: the same pools, sampled with the model being trained (targets are extra frozen calls).
Each loop trains in rungs of --rung samples (a run resumed with more iterations equals the longer run, so a
rung costs only its own iterations) and after each rung the concept's prompts of the shapes-objects suite
are generated and read by the oracle (--n images, seeds from 30000: never used for tuning). A loop reaches
the quality when the concept is read in <= 10% of them; its time is the training time to that rung. Each
loop runs in its own process, which reports its peak resident memory. Speedup = official-trained's time
to quality / ours' (a loop that never gets there within --max-samples gives a lower bound, marked ">=").
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOOPS = {
    "official-trained": {"pool_trajectories": 0, "batch_size": 1, "sampler": "trained"},
    "official-frozen": {"pool_trajectories": 0, "batch_size": 1, "sampler": "frozen"},
    "ours": {},
    "ours-trained": {"sampler": "trained"},
}
EVAL_SEED = 30000
QUALITY = 0.10


def run_loop(name: str, args) -> dict:
    """Train one loop rung by rung until the concept is erased; runs in a child process."""
    from dataclasses import replace

    from concept_edit import EditRequest, fit, make_config, make_inputs
    from concept_edit.evaluation.evaluate import evaluate
    from concept_edit.evaluation.suites import get_suite
    from concept_edit.models import load_pipeline

    pipe = load_pipeline("shapes", device="cpu")
    suite = get_suite("shapes-objects", args.n, EVAL_SEED)
    suite = replace(suite, entries=tuple(e for e in suite.entries if e.label == args.concept))
    request = EditRequest(concepts=(args.concept,))
    options = LOOPS[name]
    batch = options.get("batch_size", make_config("esd").batch_size)
    rungs, train_s = [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "run.safetensors"
        samples = 0
        while samples < args.max_samples:
            samples += args.rung
            config = make_config("esd", **options, iterations=samples // batch)
            inputs = make_inputs("esd", checkpoint=ckpt, resume=ckpt.exists(), checkpoint_every=10**9)
            started = time.perf_counter()
            edit = fit(pipe, "esd", request, config, inputs, seed=args.seed, progress=False)
            train_s += time.perf_counter() - started
            result, _ = evaluate(pipe, suite, edits=[edit], progress=False)
            accuracy = result["per_concept"][args.concept]["accuracy"]
            rungs.append({"samples": samples, "iterations": samples // batch, "train_s": round(train_s, 2),
                          "accuracy": accuracy})  # fmt: skip
            print(f"  {name}: {samples} samples, {train_s:.1f} s, {args.concept} read in {accuracy:.2f}", flush=True)
            if accuracy <= QUALITY:
                break
    reached = rungs[-1]["accuracy"] <= QUALITY
    return {
        "loop": name,
        "options": options,
        "rungs": rungs,
        "reached": reached,
        "time_to_quality_s": rungs[-1]["train_s"],
        "iterations_per_s": rungs[-1]["iterations"] / rungs[-1]["train_s"],
        "samples_per_s": rungs[-1]["samples"] / rungs[-1]["train_s"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concept", default="circle")
    parser.add_argument("--rung", type=int, default=200, help="training samples between evaluations")
    parser.add_argument("--max-samples", type=int, default=1600)
    parser.add_argument("--n", type=int, default=16, help="images of the concept per evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loops", default=",".join(LOOPS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_loop(args.child, args)))
        return
    results = {}
    for name in args.loops.split(","):
        command = [sys.executable, __file__, "--child", name, "--concept", args.concept, "--rung", str(args.rung),
                   "--max-samples", str(args.max_samples), "--n", str(args.n), "--seed", str(args.seed)]  # fmt: skip
        print(f"{name} ...", flush=True)
        out = subprocess.run(command, check=True, capture_output=True, text=True)
        print("\n".join(line for line in out.stdout.splitlines()[:-1]), flush=True)
        results[name] = json.loads(out.stdout.splitlines()[-1])
    summary = _summary(results, args)
    _print(results, summary)
    if args.json:
        print(json.dumps(summary))


def _summary(results: dict, args) -> dict:
    out = {"concept": args.concept, "n": args.n, "eval_seed": EVAL_SEED, "quality": QUALITY, "loops": results}
    base, ours = results.get("official-trained"), results.get("ours")
    if base and ours and ours["reached"]:
        out["speedup"] = base["time_to_quality_s"] / ours["time_to_quality_s"]
        out["speedup_is_lower_bound"] = not base["reached"]
        out["iterations_per_s_ratio"] = ours["samples_per_s"] / base["samples_per_s"]
    return out


def _print(results: dict, summary: dict) -> None:
    print(f"\n| loop | samples to <= {QUALITY:.0%} | time to quality (s) | samples/s | peak RSS (MB) |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        mark = "" if r["reached"] else " (not reached)"
        last = r["rungs"][-1]
        print(f"| {name} | {last['samples']}{mark} | {r['time_to_quality_s']:.1f} | {r['samples_per_s']:.2f} | "
              f"{r['peak_rss_mb']:.0f} |")  # fmt: skip
    if "speedup" in summary:
        bound = ">= " if summary["speedup_is_lower_bound"] else ""
        print(f"\nspeedup to equal erasure (official-trained / ours): {bound}{summary['speedup']:.1f}x")


if __name__ == "__main__":
    main()
