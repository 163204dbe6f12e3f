"""The processes of one run under `accelerate launch --num_processes N` (torchrun): which one this is, how many
there are, the device each owns, the share of the work each takes and the one sum that joins the shares.

`process_group()` reads the launch from the environment: `accelerate launch` (torchrun) sets WORLD_SIZE for
n > 1, and accelerate's `PartialState` then joins the processes (NCCL between GPUs; gloo between CPU
processes when there is no CUDA). Without it, one process: rank 0 of 1. Ranks can also be given by hand
(`process_group(process_index, num_processes)`): the processes are then not connected, each computes only
its share and nothing is summed across them (the store fills a share this way; a test checks shares so).

Work is dealt out by position, as the image store deals its images: unit i goes to process i % n, so every
process must decide the same units (the same samples, timesteps and random draws, from the seed) before
taking its share; the union of the shares is then exactly the one-process set. `sum_across` adds the
processes' partial sums once, at the end.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from concept_edit.validation import check_number

__all__ = ["Group", "check_device", "process_device", "process_group", "share", "sum_across"]


@dataclass(frozen=True)
class Group:
    """This process's place among the processes of a run."""

    rank: int
    count: int
    wait: Callable[[], None] | None  # accelerate's barrier; None when the ranks were given by hand (or n = 1)
    device: torch.device | None = None  # the device this process owns (accelerate's), when launched so

    @property
    def connected(self) -> bool:
        """True when the processes can sum across each other (launched together), False for one process or
        ranks given by hand."""
        return self.wait is not None and self.count > 1

    @property
    def main(self) -> bool:
        """The process that shows progress and writes files."""
        return self.rank == 0


def process_group(process_index: int | None = None, num_processes: int | None = None) -> Group:
    """This process's group: from `accelerate launch` (WORLD_SIZE > 1), else one process; or the ranks given."""
    if process_index is None and num_processes is None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # set by `accelerate launch` (torchrun) for n > 1
            from accelerate import PartialState

            state = PartialState(cpu=not torch.cuda.is_available())  # without CUDA: gloo across CPU processes
            return Group(state.process_index, state.num_processes, state.wait_for_everyone, state.device)
        return Group(0, 1, None)
    if process_index is None or num_processes is None:
        raise ValueError("give both process_index and num_processes, or neither")
    count = check_number("num_processes", num_processes, low=1, integer=True)
    rank = check_number("process_index", process_index, low=0, high=count - 1, integer=True)
    return Group(rank, count, None)


def process_device() -> torch.device | None:
    """The device this process owns under `accelerate launch` with several processes (load the model there);
    None when not launched so."""
    group = process_group()
    return group.device if group.count > 1 else None


def share(units: int, group: Group, what: str) -> range:
    """The indices of the `units` units of work this process takes: i for every i % count == rank.

    More processes than units is refused (a process would have nothing to do), the same on every process, so
    call it before any work.
    """
    if group.count > 1 and group.count > units:
        raise ValueError(
            f"{group.count} processes but only {units} {what} to split among them: launch at most {units} "
            f"(accelerate launch --num_processes {units}), or give the run more work"
        )
    return range(group.rank, units, group.count)


def check_device(group: Group, device: torch.device | str) -> None:
    """Refuse, before any work, a model that is not on the GPU this process owns (NCCL sums there)."""
    device = torch.device(device)
    if group.connected and group.device is not None and group.device.type == "cuda" and device != group.device:
        raise ValueError(
            f"process {group.rank} of {group.count} owns {group.device} but the model is on {device}: load it on "
            "concept_edit.processes.process_device()"
        )


def sum_across(tensors: Sequence[torch.Tensor], group: Group, *, bucket: int = 2**26) -> None:
    """Replace each tensor, in place, by its sum over the processes of `group` (all must call this, with tensors
    of the same shapes and dtypes, in the same order). Nothing happens unless the processes are connected.

    Called once, at the end of a sharded sum. The tensors travel flattened together in all-reduces of at most
    `bucket` elements (a larger tensor alone), so no second full copy of a billion-weight model is held.
    """
    if not group.connected or not tensors:
        return
    import torch.distributed as dist

    batch: list[torch.Tensor] = []

    def flush() -> None:
        if not batch:
            return
        flat = torch.cat([t.reshape(-1) for t in batch])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for t in batch:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
        batch.clear()

    size = 0
    for t in tensors:
        if batch and (size + t.numel() > bucket or t.dtype != batch[0].dtype or t.device != batch[0].device):
            flush()
            size = 0
        batch.append(t)
        size += t.numel()
    flush()
