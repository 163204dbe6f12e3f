"""UCE solve speed on Stable-Diffusion-1.4-shaped cross-attention projections.

    python benchmarks/uce_speed.py            # table
    python benchmarks/uce_speed.py --json     # last line: {"rows": [...], "speedup", ...}
    python benchmarks/uce_speed.py --baseline # also time an official-style loop (rank-1 updates, per-layer inverse)

Projections: SD 1.4's 16 cross-attention layers, to_k and to_v each (out 320/640/1280, in 768), random
weights; embeddings random with CLIP-like norms. `solve_s` is the whole edit computation of this library
(covariances in float64, one `torch.linalg.solve`, every layer's delta). `encode_s` is the time to encode the
N + P prompts with a CLIP-ViT-L/14-shaped text encoder (SD 1.4's; random weights, 77 tokens): it is measured on
one batch of 64 prompts and scaled to N + P (encoding cost does not depend on the weights or the words).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from concept_edit.methods.uce import layer_deltas, uce_operator

SD14_OUT = [320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320]  # down, mid, up
DIM = 768


def projections(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for i, out in enumerate(SD14_OUT):
        for proj in ("to_k", "to_v"):
            weights[f"layer{i}.{proj}.weight"] = torch.randn(out, DIM, generator=gen) / DIM**0.5
    return weights


def embeddings(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(n, DIM, generator=gen)  # norm ~ sqrt(768) ~ 28, like CLIP's last hidden states


def _median_time(run, repeats: int) -> float:
    """Median wall time of `repeats` calls: ours and the baseline are timed the same way."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def time_solve(weights, n_edit: int, n_preserve: int, repeats: int, float64: bool = True) -> float:
    gen = torch.Generator().manual_seed(n_edit)
    c_e, guide, c_p = embeddings(n_edit, gen), embeddings(1, gen), embeddings(n_preserve, gen)
    dtype = torch.float64 if float64 else torch.float32

    def run():
        u, v = uce_operator(c_e, guide.expand_as(c_e), c_p, erase_scale=1.0, preserve_scale=1.0, lam=0.5, dtype=dtype)
        layer_deltas(weights, u, v, dtype)

    return _median_time(run, repeats)


def time_official_loop(weights, n_edit: int, n_preserve: int, repeats: int) -> float:
    """The official scripts' shape: per layer, add rank-1 outer products one concept at a time, then inverse."""
    gen = torch.Generator().manual_seed(n_edit)
    c_e, guide, c_p = embeddings(n_edit, gen), embeddings(1, gen), embeddings(n_preserve, gen)

    def run():
        for w in weights.values():
            mat1 = 0.5 * w.clone()
            mat2 = 0.5 * torch.eye(DIM)
            v_star = w @ guide[0]
            for c in c_e:
                mat1 += torch.outer(v_star, c)
                mat2 += torch.outer(c, c)
            for c in c_p:
                mat1 += torch.outer(w @ c, c)
                mat2 += torch.outer(c, c)
            _ = mat1 @ torch.inverse(mat2)

    return _median_time(run, repeats)


def encode_seconds_per_prompt(batch: int = 64) -> float:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
    )
    model = CLIPTextModel(config).eval()
    ids = torch.randint(0, 49408, (batch, 77), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(ids[:2])  # warm-up
        started = time.perf_counter()
        model(ids)
    return (time.perf_counter() - started) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concepts", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--preserved", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="median of this many runs, ours and the baseline")
    parser.add_argument("--baseline", action="store_true", help="also time the official-style loop (~30 s a run)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    weights = projections()
    per_prompt = encode_seconds_per_prompt()
    rows = []
    for n in args.concepts:
        rows.append(
            {
                "concepts": n,
                "preserved": args.preserved,
                "solve_s": round(time_solve(weights, n, args.preserved, args.repeats), 4),
                "solve_float32_s": round(time_solve(weights, n, args.preserved, args.repeats, False), 4),
                "encode_s": round(per_prompt * (n + args.preserved), 2),
            }
        )
    baseline = None
    if args.baseline:
        n = max(args.concepts)
        official = time_official_loop(weights, n, args.preserved, args.repeats)
        ours = next(r["solve_s"] for r in rows if r["concepts"] == n)
        baseline = {
            "concepts": n,
            "preserved": args.preserved,
            "official_loop_s": round(official, 2),
            "speedup": round(official / ours, 1),
        }
    print(f"UCE on SD-1.4-shaped projections (16 layers x K,V; torch threads: {torch.get_num_threads()})")
    print(f"{'concepts':>9} {'preserved':>10} {'solve_s (f64)':>14} {'solve_s (f32)':>14} {'encode_s*':>10}")
    for r in rows:
        print(
            f"{r['concepts']:>9} {r['preserved']:>10} {r['solve_s']:>14.3f} {r['solve_float32_s']:>14.3f} "
            f"{r['encode_s']:>10.1f}"
        )
    print(
        f"* encoding N + P prompts with a CLIP-L-shaped text encoder, {per_prompt * 1000:.1f} ms per prompt "
        "(measured on a batch of 64, scaled)"
    )
    if baseline:
        print(
            f"official-style loop (rank-1 updates, per-layer inverse), {baseline['concepts']} concepts + "
            f"{baseline['preserved']} preserved: {baseline['official_loop_s']:.1f} s; ours is "
            f"{baseline['speedup']:.0f}x faster (median of {args.repeats} runs each)"
        )
    if args.json:
        out = {"rows": rows, "threads": torch.get_num_threads(), "encode_s_per_prompt": per_prompt}
        out["timing"] = f"median of {args.repeats} runs, ours and the baseline alike"
        if baseline:
            out.update(baseline=baseline, speedup=baseline["speedup"])
        print(json.dumps(out))


if __name__ == "__main__":
    main()
