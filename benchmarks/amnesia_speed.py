"""Selective Amnesia's Fisher on ShapesSD: the official loop against ours, on the same samples, in one run.

    python benchmarks/amnesia_speed.py [--samples 3] [--timesteps 50] [--group all] [--json] [--smoke]

Per sample x (a latent ShapesSD draws for a replay prompt) the Fisher needs g = sum_t dL_t(x)/dtheta over the
T = 1000 training timesteps, squared (paper 004, section 2; the official `ddpm_fim.py`):
* official: a batch-1 forward per timestep, the losses of each of 20 chunks summed and backpropagated;
* ours, all T (the same estimator): the timesteps batched 250 per forward/backward, same noise, so the
  squared gradients agree to float rounding (their largest relative difference is printed);
* ours, S timesteps (the ShapesSD default, `fisher_timesteps`): one timestep per stratum of T/S, the loss
  scaled by T/S. Unbiased for g, so F is biased upward by g's variance; how far its F is from the all-T F
  on the same samples is printed (relative L1 error, Pearson r of log F, overlap of the top 1%).
Samples are timed interleaved (official, ours all T, ours S for each), on this machine's threads; the
medians of the per-sample seconds and their ratios are reported. `"speedup"` is official / ours at the
default S; `"speedup_same_estimator"` is official / ours at all T.
`--smoke` uses only the first SMOKE_T = 20 of the T timesteps (T = 20 for all three estimators), so that the test
suite runs the script end to end in seconds; its figures say nothing about the Fisher (the JSON then carries
"smoke": true).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial

import torch

SMOKE_T = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--timesteps", type=int, default=50, help="S of ours, subsampled (the ShapesSD default)")
    parser.add_argument("--group", default="all", help="trained parameter group: all | x | u")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--smoke", action="store_true", help=f"T = {SMOKE_T} timesteps: a quick check only")
    args = parser.parse_args()

    from concept_edit.edit import trainable
    from concept_edit.methods.amnesia.backends import backend_for
    from concept_edit.methods.amnesia.fisher import (
        diffusion_squared_gradient,
        fisher_timesteps,
        official_squared_gradient,
    )
    from concept_edit.models.conditioning import encode_conditions
    from concept_edit.models.loading import load_pipeline
    from concept_edit.training import step_generator
    from concept_edit.worlds.shapes.vocabulary import replay_prompts

    pipe = load_pipeline("shapes", device="cpu")
    prompts = replay_prompts(("circle",), args.samples, args.seed)
    backend = backend_for(pipe, encode_conditions(pipe, ["", *prompts]))
    rows = torch.arange(1, args.samples + 1)
    latents = backend.generate(rows, args.seed, 31)
    T = SMOKE_T if args.smoke else backend.num_timesteps
    seconds = {"official": [], "ours_all": [], "ours_subsampled": []}
    sums = {k: None for k in seconds}
    with trainable(pipe, backend.parameter_names(args.group)) as tuned:
        params = tuned.parameters
        for n in range(args.samples):
            x0, row = latents[n : n + 1], rows[n : n + 1]
            gen = step_generator(args.seed, n, 41)
            t_all, _ = fisher_timesteps(T, None, gen)
            noise_all = backend.noise_for(x0, T, gen)
            t_sub, scale = fisher_timesteps(T, args.timesteps, gen)
            noise_sub = backend.noise_for(x0, len(t_sub), gen)
            runs = {
                "official": partial(official_squared_gradient, params, backend.loss, x0, row, t_all, noise_all),
                "ours_all": partial(diffusion_squared_gradient, params, backend.loss, x0, row, t_all, noise_all),
                "ours_subsampled": partial(
                    diffusion_squared_gradient, params, backend.loss, x0, row, t_sub, noise_sub, scale=scale
                ),
            }
            for name, run in runs.items():
                started = time.perf_counter()
                squares = run()
                seconds[name].append(time.perf_counter() - started)
                flat = torch.cat([s.flatten().double() for s in squares])
                sums[name] = flat if sums[name] is None else sums[name] + flat
            print(f"sample {n}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in seconds.items()), flush=True)

    official, full, sub = (sums[k] / args.samples for k in ("official", "ours_all", "ours_subsampled"))
    same = float((full - official).abs().max() / official.abs().max())
    positive = (full > 0) & (sub > 0)
    log_r = float(torch.corrcoef(torch.stack([full[positive].log(), sub[positive].log()]))[0, 1])
    top = max(1, len(full) // 100)
    overlap = len(set(full.topk(top).indices.tolist()) & set(sub.topk(top).indices.tolist())) / top
    med = {k: statistics.median(v) for k, v in seconds.items()}
    out = {
        "model": "shapes",
        "samples": args.samples,
        "timesteps_total": T,
        "timesteps_subsampled": args.timesteps,
        "parameter_group": args.group,
        "threads": torch.get_num_threads(),
        "seconds_per_sample": med,
        "speedup": med["official"] / med["ours_subsampled"],
        "speedup_same_estimator": med["official"] / med["ours_all"],
        "same_estimator_max_relative_difference": same,
        "subsampled_vs_all": {
            "relative_l1_error": float((sub - full).abs().sum() / full.abs().sum()),
            "log_pearson_r": log_r,
            "top1pct_overlap": overlap,
            "mean_ratio": float(sub.sum() / full.sum()),
        },
    }
    if args.smoke:
        out["smoke"] = True
    print()
    print(f"Fisher seconds per sample (median of {args.samples}, {out['threads']} threads, group {args.group}):")
    print(f"  official, batch-1 per timestep, T = {T}: {med['official']:.2f}")
    print(f"  ours, timesteps batched, T = {T}:       {med['ours_all']:.2f}  ({out['speedup_same_estimator']:.1f}x)")
    print(
        f"  ours, S = {args.timesteps} stratified:              {med['ours_subsampled']:.2f}  ({out['speedup']:.1f}x)"
    )
    print(f"same estimator: largest |difference| / largest F = {same:.2e}")
    s = out["subsampled_vs_all"]
    print(f"S = {args.timesteps} vs all T: relative L1 {s['relative_l1_error']:.3f}, Pearson r of log F "
          f"{s['log_pearson_r']:.3f}, top-1% overlap {s['top1pct_overlap']:.2f}, "
          f"sum ratio {s['mean_ratio']:.3f}")  # fmt: skip
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
