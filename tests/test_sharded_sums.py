"""Selective Amnesia's Fisher and CAD's attribution split across processes: two real CPU processes (gloo, given the
environment `accelerate launch` / torchrun give them: RANK, WORLD_SIZE, MASTER_ADDR/PORT) give the one-process
result, and more processes than units of work are refused on every process before any work.

The tolerance is the float32 rounding of a reordered sum, computed per element from the summed terms themselves:
with one process the K terms (per-sample squares; per-batch gradients) are added one after another, with two each
process adds its own and the two partial sums are added once. Any order of a float32 sum of K terms is within
gamma_{K-1} * sum_k |t_k| of the exact sum (gamma_n = n u / (1 - n u), u = 2^-24), so two orders differ by at most
2 gamma_{K-1} sum_k |t_k|; the final division (Fisher) or product with the weight (CAD scores) rounds once more
in each (2 u |result| <= 2 u sum_k |t_k|, doubled here to cover the terms' own rounding). The terms are computed
in one process (rank 0, one thread, each term alone through hand-given ranks) and are the same bits in both
runs: a term is computed alone, by the same code on the same inputs, whichever process adds it. A missing or
doubled share is off by a whole term.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from concept_edit import EditRequest, make_config
from concept_edit.methods.cad.fit import CADInputs, attribute
from concept_edit.processes import Group, process_group, share

UNIT_ROUNDOFF = 2.0**-24
FISHER_SAMPLES = 5  # odd: the two shares differ in size (samples 0, 2, 4 and 1, 3)
CAD_OPTIONS = {"samples": 2, "steps": 4, "batch_size": 3}  # 8 samples (x_t, t): batches 0, 2 and 1

WORKER = r"""
import json, os, sys
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, sys.argv[3])
from safetensors.torch import save_file
from tiny_models import tiny_sd

from concept_edit import EditRequest, fit, make_config
from concept_edit.edit import trainable
from concept_edit.methods.amnesia import fit as amnesia
from concept_edit.methods.amnesia.backends import Data, backend_for
from concept_edit.methods.cad import fit as cad
from concept_edit.models.conditioning import encode_conditions
from concept_edit.processes import Group, process_group, sum_across

out, tokenizer = Path(sys.argv[1]), Path(sys.argv[2])
FISHER_SAMPLES, CAD_OPTIONS = {fisher_samples}, {cad_options}
group = process_group()
assert group.connected and group.count == 2, group
pipe = tiny_sd(tokenizer, seed=0)
cond = encode_conditions(pipe, ["", "a cat", "a dog"])
backend = backend_for(pipe, cond, steps=2)
rows = torch.tensor([1, 2] * FISHER_SAMPLES)[:FISHER_SAMPLES]
data = Data(backend.generate(rows, 0, 31), rows)  # every process draws the same samples from the seed
keys = backend.parameter_names("x")
values = {{"fisher_timesteps": 4, "fisher_chunk": 4}}
request = EditRequest(concepts=("cat",))
config = make_config("cad", **CAD_OPTIONS)


def fisher(processes=None, samples=data):
    with trainable(pipe, keys) as tuned:
        f = amnesia.fisher_of(backend, tuned.parameters, samples, values, seed=5, progress=False, group=processes)
    return dict(zip(keys, f, strict=True))


def scores(processes=None, cfg=config, inputs=cad.CADInputs()):
    return cad.attribute(pipe, request, cfg, inputs, seed=4, progress=False, group=processes).scores


def refusal(call):
    try:
        call()
    except ValueError as err:
        return str(err)
    return None


results = {{"fisher.full": fisher(), "cad.full": scores()}}  # the two processes, summed across them
# buckets of 4 elements: a tensor larger than a bucket, tensors sharing one, another dtype
parts = [torch.arange(6.0) * (group.rank + 1), torch.ones(2) * (group.rank + 1), torch.full((1,), 2.0 + group.rank),
         torch.arange(3, dtype=torch.float64) + group.rank, torch.ones(2, 2) * (group.rank + 10)]
sum_across(parts, group, bucket=4)
results["buckets"] = {{str(k): t for k, t in enumerate(parts)}}
if group.rank == 0:  # one process (the code path without WORLD_SIZE), a share alone, each term alone
    results["fisher.one"] = fisher(Group(0, 1, None))
    results["cad.one"] = scores(Group(0, 1, None))
    results["fisher.share0"] = fisher(Group(0, 2, None))
    results["cad.share0"] = scores(Group(0, 2, None))
    for k in range(FISHER_SAMPLES):
        results[f"fisher.term{{k}}"] = fisher(Group(k, FISHER_SAMPLES, None))
    for k in range(3):
        results[f"cad.term{{k}}"] = scores(Group(k, 3, None))


def no_work(*args, **kwargs):
    raise AssertionError("work started before the process count was checked")


amnesia._plan = cad.erase_samples = no_work  # a refusal must come before any sample is drawn
amnesia_config = make_config("amnesia", steps=1, fisher_samples=1, replay_samples=1, surrogate="uniform")
refusals = {{
    "fisher_of": refusal(lambda: fisher(samples=data.take(torch.arange(1)))),
    "fit_amnesia": refusal(lambda: fit(pipe, "amnesia", EditRequest(concepts=("cat",), preserve=("a dog",)),
                                       amnesia_config, seed=0, progress=False)),
    "attribute": refusal(lambda: scores(cfg=make_config("cad", samples=1, steps=2, batch_size=8))),
    "checkpoint": refusal(lambda: scores(inputs=cad.CADInputs(checkpoint=out / "never.safetensors"))),
}}
save_file({{f"{{name}}/{{k}}": t.contiguous() for name, d in results.items() for k, t in d.items()}},
          str(out / f"rank{{group.rank}}.safetensors"))
(out / f"rank{{group.rank}}.json").write_text(json.dumps(refusals))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(clip_tokenizer_dir, tmp_path_factory):
    """Run the worker as rank 0 and rank 1 of a real two-process gloo group; (tensors, refusals) per rank."""
    folder = tmp_path_factory.mktemp("sharded")
    script = folder / "worker.py"
    script.write_text(WORKER.format(fisher_samples=FISHER_SAMPLES, cad_options=CAD_OPTIONS))
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
           "LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}  # fmt: skip
    args = [sys.executable, str(script), str(folder), str(clip_tokenizer_dir), str(Path(__file__).parent)]
    procs = [
        subprocess.Popen(
            args,
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    deadline = time.monotonic() + 240
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for rank, (proc, text) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{text[-4000:]}"
    return [
        (load_file(str(folder / f"rank{r}.safetensors")), json.loads((folder / f"rank{r}.json").read_text()))
        for r in range(2)
    ]


def _part(tensors: dict, name: str) -> dict:
    return {k.split("/", 1)[1]: t for k, t in tensors.items() if k.split("/", 1)[0] == name}


def _bound(terms: list[dict], key: str) -> torch.Tensor:
    """Per element: how far two float32 summation orders of these terms may differ: 2 gamma_{K-1} sum_k |t_k|,
    plus 4 u sum_k |t_k| for the last rounding in each (2 u) and for the stored terms being rounded themselves
    (t_k = w * g_k or g_k^2 / M in float32: sum_k |t_k| is within a factor 1 -+ u of the exact magnitude)."""
    k = len(terms)
    gamma = (k - 1) * UNIT_ROUNDOFF / (1 - (k - 1) * UNIT_ROUNDOFF)
    magnitude = sum(t[key].double().abs() for t in terms)
    return (2 * gamma + 4 * UNIT_ROUNDOFF) * magnitude


@pytest.mark.parametrize(("what", "units"), [("fisher", FISHER_SAMPLES), ("cad", 3)])
def test_two_processes_give_the_one_process_sum(two_processes, what, units):
    (rank0, _), (rank1, _) = two_processes
    one, full, share0 = _part(rank0, f"{what}.one"), _part(rank0, f"{what}.full"), _part(rank0, f"{what}.share0")
    terms = [_part(rank0, f"{what}.term{k}") for k in range(units)]
    assert one and set(one) == set(full) == set(_part(rank1, f"{what}.full"))
    assert sum(float(t.abs().sum()) for t in one.values()) > 0
    off_by_a_share = 0
    for key in one:
        bound = _bound(terms, key)
        # every process ends with the same sum (two partial sums added, in either order: the same float)
        assert torch.equal(full[key], _part(rank1, f"{what}.full")[key])
        torch.testing.assert_close(full[key].double(), one[key].double(), rtol=0, atol=float(bound.max()))
        assert bool(((full[key].double() - one[key].double()).abs() <= bound).all()), key  # per element
        # the terms are the units of the sum: they add up to it (so the bound is taken over the right terms)
        torch.testing.assert_close(sum(t[key].double() for t in terms), one[key].double(), rtol=0,
                                   atol=float(bound.max()))  # fmt: skip
        off_by_a_share += int(((share0[key].double() - one[key].double()).abs() > bound).sum())
    # the check can fail: one process's share alone is far outside the tolerance (the other share is missing)
    assert off_by_a_share > 0


def test_the_sum_across_processes_in_buckets(two_processes):
    for tensors, _ in two_processes:
        parts = _part(tensors, "buckets")
        assert torch.equal(parts["0"], torch.arange(6.0) * 3)  # rank 0's + rank 1's
        assert torch.equal(parts["1"], torch.full((2,), 3.0))
        assert torch.equal(parts["2"], torch.full((1,), 5.0))
        assert parts["3"].dtype == torch.float64 and torch.equal(
            parts["3"], torch.arange(3, dtype=torch.float64) * 2 + 1
        )
        assert torch.equal(parts["4"], torch.full((2, 2), 21.0))


def test_more_processes_than_units_are_refused_on_every_process_before_any_work(two_processes):
    for rank, (_, refusals) in enumerate(two_processes):
        assert "2 processes but only 1 Fisher sample steps" in refusals["fisher_of"], rank
        assert "2 processes but only 1 Fisher sample steps" in refusals["fit_amnesia"], rank
        assert "2 processes but only 1 backward batches" in refusals["attribute"], rank
        assert "checkpoints (and --resume) work with one process only" in refusals["checkpoint"], rank


def test_shares_are_dealt_by_position_and_checked(sd):
    assert list(share(5, Group(0, 2, None), "units")) == [0, 2, 4]
    assert list(share(5, Group(1, 2, None), "units")) == [1, 3]
    assert list(share(3, Group(0, 1, None), "units")) == [0, 1, 2]
    with pytest.raises(ValueError, match="3 processes but only 2 units"):
        share(2, Group(2, 3, None), "units")
    assert process_group() == Group(0, 1, None)  # no WORLD_SIZE: one process
    with pytest.raises(ValueError, match="give both"):
        process_group(0, None)
    with pytest.raises(ValueError, match="2 processes but only 1 backward batches"):  # ranks given by hand too
        attribute(sd, EditRequest(concepts=("cat",)), make_config("cad", samples=1, steps=2, batch_size=8),
                  CADInputs(), seed=0, progress=False, group=Group(1, 2, None))  # fmt: skip
