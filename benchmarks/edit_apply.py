"""Memory of applying a whole-UNet dense edit (what an ESD-u or Selective Amnesia edit is) to an SD-1.4 UNet.

    python benchmarks/edit_apply.py                  # float16 and float32 UNets, table
    python benchmarks/edit_apply.py --baseline       # also the eager path this library had before (v0.1)
    python benchmarks/edit_apply.py --json           # last line: {"model_bytes", "peak_extra_bytes", "ratio", "rows"}
    python benchmarks/edit_apply.py --smoke --json   # a tiny UNet (<1M parameters): the whole path in seconds

The UNet is SD 1.4's (`UNet2DConditionModel`, 860M parameters) built from its config with random weights.
A dense delta for every one of its tensors is saved as an edit file (in the model's dtype). Then, in a fresh
process that builds the same UNet, the edit is loaded and applied, and `peak_extra_bytes` is the kernel's
peak resident set size during load + apply (VmHWM, reset just before) minus the resident size before it.
`ratio` = peak_extra_bytes / model_bytes. Part of it cannot go: the copy of every changed tensor that makes
`revert` restore the exact original bytes is 1.0 of the model for a whole-UNet edit. Target: ratio <= 1.3.
The top-level figures are the float16 UNet's (the dtype SD checkpoints ship in); `rows` has every run.
`--baseline` measures the previous implementation's path in the same way: every delta read eagerly, an
updated float32 copy of every tensor, then the snapshot.
`--smoke` builds a tiny UNet of the same kind (`SMOKE_UNET`) in place of SD 1.4's, so the test suite can run the
script end to end in seconds; its figures say nothing about SD 1.4 (the JSON then carries "smoke": true).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

SD14_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SMOKE_UNET = {  # --smoke: the same kinds of blocks, under a million parameters
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
}


def build_pipe(dtype: torch.dtype, seed: int = 0, smoke: bool = False):
    """An SD-1.4-shaped UNet (`smoke`: a tiny one) with random weights (allocated once, no init pass), wrapped as
    a pipeline."""
    import diffusers
    from diffusers import UNet2DConditionModel

    from concept_edit.models.loading import ModelInfo

    diffusers.logging.set_verbosity_error()  # no advice about from_pretrained: this UNet is built from config

    with torch.device("meta"):
        unet = UNet2DConditionModel(**(SMOKE_UNET if smoke else SD14_UNET))
    unet = unet.to_empty(device="cpu").to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * 0.02)
    pipe = types.SimpleNamespace(unet=unet, components={"unet": unet})
    pipe.concept_edit_info = ModelInfo("tiny-random" if smoke else "sd14-shaped-random", None, 30, 7.5, 512)
    return pipe


def make_edit_file(dtype: torch.dtype, path: Path, smoke: bool = False) -> int:
    from concept_edit.edit import DenseDelta, Edit

    pipe = build_pipe(dtype, smoke=smoke)
    changes = [DenseDelta(f"unet.{n}", torch.full_like(p, 1e-3)) for n, p in pipe.unet.named_parameters()]
    Edit.create(pipe, changes, method="benchmark", config={}, request={"concepts": ["all"]}, seed=0).save(path)
    return len(changes)


def _memory_kb() -> tuple[int, int]:
    status = Path("/proc/self/status").read_text()
    return tuple(int(re.search(rf"{key}:\s+(\d+)", status).group(1)) for key in ("VmRSS", "VmHWM"))


def _baseline_apply(pipe, path: Path) -> dict:
    """The v0.1 path: all deltas read at once, an fp32 updated copy of every tensor, a snapshot, then copy."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    params = dict(pipe.unet.named_parameters())
    updated = {}
    for name, tensor in tensors.items():
        key = name.removeprefix("unet.").removesuffix(".delta")
        updated[key] = (params[key].detach().float() + tensor.float()).to(params[key].dtype)
    snapshot = {k: params[k].detach().clone() for k in updated}
    with torch.no_grad():
        for k, value in updated.items():
            params[k].copy_(value)
    del tensors, updated
    return snapshot


def measure(dtype_name: str, path: str, baseline: bool, smoke: bool = False) -> dict:
    """Runs in a fresh process: build the UNet, then load + apply the edit and record the memory."""
    import gc

    from concept_edit.edit import Edit, apply, revert
    from concept_edit.edit.state import value_digest

    pipe = build_pipe(getattr(torch, dtype_name), smoke=smoke)
    model_bytes = sum(p.numel() * p.element_size() for p in pipe.unet.parameters())
    before_digests = {n: value_digest(n, p) for n, p in pipe.unet.named_parameters()}
    gc.collect()
    rss_before, _ = _memory_kb()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident size (VmHWM) to the current one
    started = time.perf_counter()
    if baseline:
        kept = _baseline_apply(pipe, Path(path))
    else:
        apply(pipe, Edit.load(path))
    apply_s = time.perf_counter() - started
    _, peak = _memory_kb()
    row = {
        "path": "v0.1 eager (baseline)" if baseline else "concept-edit",
        "dtype": dtype_name,
        "model_bytes": model_bytes,
        "peak_extra_bytes": (peak - rss_before) * 1024,
        "apply_s": round(apply_s, 2),
    }
    started = time.perf_counter()
    if baseline:
        with torch.no_grad():
            for name, p in pipe.unet.named_parameters():
                p.copy_(kept[name])
    else:
        revert(pipe)
    row["revert_s"] = round(time.perf_counter() - started, 2)
    row["revert_exact"] = all(value_digest(n, p) == before_digests[n] for n, p in pipe.unet.named_parameters())
    row["ratio"] = round(row["peak_extra_bytes"] / model_bytes, 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["float16", "float32"])
    parser.add_argument("--baseline", action="store_true", help="also measure the v0.1 eager apply")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="a tiny UNet instead of SD 1.4's: a quick check only")
    parser.add_argument("--measure", nargs=3, metavar=("DTYPE", "PATH", "BASELINE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # the child process
        dtype_name, path, baseline = args.measure
        print(json.dumps(measure(dtype_name, path, baseline == "1", args.smoke)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype_name in args.dtypes:
            path = Path(tmp) / f"whole-unet-{dtype_name}.safetensors"
            started = time.perf_counter()
            tensors = make_edit_file(getattr(torch, dtype_name), path, args.smoke)
            made_s = time.perf_counter() - started
            for baseline in (False, True) if args.baseline else (False,):
                child = [sys.executable, __file__, "--measure", dtype_name, str(path), "1" if baseline else "0"]
                child += ["--smoke"] if args.smoke else []
                out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
                row = json.loads(out.strip().splitlines()[-1])
                row.update(tensors=tensors, file_bytes=path.stat().st_size, create_and_save_s=round(made_s, 1))
                rows.append(row)
    print(
        f"{'path':<24} {'dtype':<8} {'model GB':>9} {'file GB':>8} {'peak extra GB':>14} {'ratio':>6} "
        f"{'apply s':>8} {'revert s':>9} {'exact':>6}"
    )
    for r in rows:
        print(
            f"{r['path']:<24} {r['dtype']:<8} {r['model_bytes'] / 1e9:>9.2f} {r['file_bytes'] / 1e9:>8.2f} "
            f"{r['peak_extra_bytes'] / 1e9:>14.2f} {r['ratio']:>6.2f} {r['apply_s']:>8.1f} {r['revert_s']:>9.1f} "
            f"{str(r['revert_exact']):>6}"
        )
    if args.json:
        head = next(r for r in rows if r["path"] == "concept-edit")
        keys = ("model_bytes", "peak_extra_bytes", "ratio")
        smoke = {"smoke": True} if args.smoke else {}
        print(json.dumps({**{k: head[k] for k in keys}, "dtype": head["dtype"], "target": 1.3, "rows": rows, **smoke}))


if __name__ == "__main__":
    main()
