"""CAD attribution: the official schedule against ours, on ShapesSD, on the same samples.

    python benchmarks/cad_speed.py [--concept circle] [--steps 50,25] [--repeats 3] [--json]

* official: the schedule of `compute_positive_neurons.py`: for each DDIM step k, a trajectory is sampled
  from noise again for k guided steps (2 rows per step), then one UNet call on [c, c_base] with gradients,
  J = sum (eps_c - sg(eps_base))^2, backward into *every* UNet parameter, and every gradient added into a
  dictionary of all parameters. Two departures, both in its favour or neutral: it samples 0 + 1 + ... +
  (K - 1) steps where the real script samples 1 + ... + K (it scores the latent after step k; 4% fewer
  UNet calls at K = 50), and each regenerated trajectory starts from the same noise, so its x_t are exactly
  ours and the scores can be compared (the real script draws new noise each time, at the same cost);
* ours: `concept_edit.methods.cad.fit.attribute` with samples=1 (one trajectory, all of its steps kept, the
  base branch reused from sampling, backward through the conditional branch into the chosen weights only).
Both at K DDIM steps: 50 is the official `--ddim_steps` (the reported `"speedup"`), 25 ShapesSD's own
default. The official schedule samples 1 + 2 + ... + K steps where ours samples K, so the ratio grows
with K. Each variant runs in its own process (so that its peak resident memory is its own), `--repeats`
times, interleaved; the medians are reported with their ratio, and the largest difference between the
two score sets.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def official_scores(pipe, concept: str, modules, seed: int, steps: int) -> dict:
    import torch
    from diffusers import DDIMScheduler

    from concept_edit.methods.cad.attribution import group_weights
    from concept_edit.models.conditioning import encode_conditions, predict_noise
    from concept_edit.models.loading import model_info
    from concept_edit.training import step_generator

    info = model_info(pipe)
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    unet = pipe.unet
    cond = encode_conditions(pipe, [concept, ""])
    size = info.resolution // pipe.vae_scale_factor
    noise = torch.randn((1, unet.config.in_channels, size, size), generator=step_generator(seed, 0, 11))
    grad_dict = {name: 0 for name, _ in unet.named_parameters()}
    for p in unet.parameters():
        p.requires_grad_(True)
    for k in range(len(scheduler.timesteps)):
        x = noise * scheduler.init_noise_sigma
        with torch.no_grad():  # the trajectory again, up to step k
            for t in scheduler.timesteps[:k]:
                eps_u, eps_c = predict_noise(unet, torch.cat([x, x]), t, cond.take([1, 0])).chunk(2)
                x = scheduler.step(eps_u + 3.0 * (eps_c - eps_u), t, x).prev_sample
        t = scheduler.timesteps[k]
        eps = predict_noise(unet, torch.cat([x, x]), t, cond.take([0, 1]))
        objective = ((eps[0] - eps[1].detach()) ** 2).sum()
        unet.zero_grad()
        objective.backward()
        for name, p in unet.named_parameters():
            grad_dict[name] = grad_dict[name] + p.grad
    weights = group_weights(pipe, modules)
    count = len(scheduler.timesteps)  # ours averages over samples; the official code sums them
    return {name: w.detach() * grad_dict[name.removeprefix("unet.")] / count for name, w in weights.items()}


def our_scores(pipe, concept: str, modules, seed: int, steps: int) -> dict:
    from concept_edit import EditRequest, make_config
    from concept_edit.methods.cad.fit import CADInputs, attribute

    config = make_config("cad", samples=1, modules=tuple(modules), steps=steps)
    return attribute(pipe, EditRequest(concepts=(concept,)), config, CADInputs(), seed=seed, progress=False).scores


def child(variant: str, concept: str, modules, seed: int, steps: int, out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from concept_edit.models import load_pipeline

    torch.set_num_threads(torch.get_num_threads())
    pipe = load_pipeline("shapes", device="cpu")
    loaded = _rss_mb()
    started = time.perf_counter()
    scores = (official_scores if variant == "official" else our_scores)(pipe, concept, modules, seed, steps)
    seconds = time.perf_counter() - started
    save_file({k: v.contiguous() for k, v in scores.items()}, str(out))
    print(json.dumps({"seconds": seconds, "peak_rss_mb": _rss_mb(), "rss_after_load_mb": loaded}))


def run(variant: str, args, steps: int, out: Path) -> dict:
    modules = [flag for m in args.module or ["ff"] for flag in ("--module", m)]
    cmd = [sys.executable, __file__, "--child", variant, "--concept", args.concept, "--seed", str(args.seed),
           "--child-steps", str(steps), "--out", str(out), *modules]  # fmt: skip
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concept", default="circle")
    parser.add_argument("--module", action="append", help="module groups (default ff)")
    parser.add_argument("--steps", default="50,25", help="DDIM steps K to compare at (the first is reported)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=("official", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.concept, args.module or ["ff"], args.seed, args.child_steps, args.out)
        return
    out = {"concept": args.concept, "modules": args.module or ["ff"], "repeats": args.repeats, "by_steps": {}}
    for steps in [int(k) for k in args.steps.split(",")]:
        out["by_steps"][str(steps)] = compare(args, steps)
    first = out["by_steps"][args.steps.split(",")[0]]
    out["speedup"], out["memory_ratio"] = first["speedup"], first["memory_ratio"]
    print(f"\nreported (K = {args.steps.split(',')[0]}, the official ddim_steps): speedup {out['speedup']}x")
    if args.json:
        print(json.dumps(out))


def compare(args, steps: int) -> dict:
    """Both schedules at K = steps, interleaved, `args.repeats` times; prints the table and returns the figures."""
    from safetensors.torch import load_file

    runs: dict[str, list[dict]] = {"official": [], "ours": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for variant in runs:  # interleaved, so that drifting machine load hits both alike
                runs[variant].append(run(variant, args, steps, Path(tmp) / f"{variant}.safetensors"))
                print(f"K = {steps}, repeat {r}: {variant} {runs[variant][-1]['seconds']:.1f} s", flush=True)
        official, ours = (load_file(str(Path(tmp) / f"{v}.safetensors")) for v in ("official", "ours"))
    scale = max(float(v.abs().max()) for v in official.values())
    max_diff = max(float((official[k] - ours[k]).abs().max()) for k in official)
    out = {"steps": steps, "samples": f"1 trajectory x all {steps} steps", "max_abs_score_difference": max_diff,
           "max_abs_score": scale, "relative_difference": max_diff / scale}  # fmt: skip
    for variant, results in runs.items():
        out[variant] = {
            "median_s": round(statistics.median(r["seconds"] for r in results), 2),
            "seconds": [round(r["seconds"], 2) for r in results],
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in results), 1),
            "rss_after_load_mb": round(max(r["rss_after_load_mb"] for r in results), 1),
        }
    out["speedup"] = round(out["official"]["median_s"] / out["ours"]["median_s"], 2)
    extra = {v: out[v]["peak_rss_mb"] - out[v]["rss_after_load_mb"] for v in runs}
    out["memory_ratio"] = round(extra["official"] / max(extra["ours"], 1e-9), 2)
    print(f"\nK = {steps} DDIM steps")
    print("| schedule | median time (s) | peak RSS (MB) | RSS above the loaded model (MB) |")
    print("|---|---|---|---|")
    for variant in runs:
        o = out[variant]
        print(f"| {variant} | {o['median_s']} | {o['peak_rss_mb']} | {extra[variant]:.0f} |")
    print(f"speedup {out['speedup']}x; extra memory ratio {out['memory_ratio']}x; "
          f"scores differ by at most {max_diff:.3g} (max |score| {scale:.3g})")  # fmt: skip
    return out


if __name__ == "__main__":
    main()
