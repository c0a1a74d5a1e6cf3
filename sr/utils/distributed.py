"""Seeds derived per rank, and per-rank state gathered into one checkpoint (rank 0 writes it).

Every rank of a data-parallel run must draw its own random numbers (distinct degradations and noise), and a resumed
run must give every rank back its own generator state. ``derived_seed`` turns ``(seed, rank, ...)`` into independent
streams; ``gather_to_rank_zero`` collects one object per rank on rank 0 while Lightning dumps a checkpoint (the hook
runs on every rank; only rank 0 writes the file).
"""

import numpy as np
import torch.distributed as dist


def derived_seed(*keys: int) -> int:
    """A 63-bit seed from integer ``keys``: ``SeedSequence(keys).generate_state(1, uint64) >> 1``.

    Distinct key tuples give statistically independent streams (NumPy's SeedSequence hashing), so ``(seed, rank)``
    seeds one stream per rank and ``(seed, rank, batch)`` one per batch.
    """
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> 1)


def rank_and_world_size() -> tuple[int, int]:
    """``(global rank, world size)`` of the initialised default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_to_rank_zero(value) -> list | None:
    """``[value of rank 0, value of rank 1, ...]`` on rank 0, ``None`` on the other ranks (a collective: every rank
    must call it). Without a process group: ``[value]``."""
    rank, world_size = rank_and_world_size()
    if world_size == 1:
        return [value]
    gathered = [None] * world_size if rank == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def own_rank_entry(per_rank: list, what: str):
    """This rank's entry of a per-rank list read from a checkpoint; a checkpoint of another world size is refused."""
    rank, world_size = rank_and_world_size()
    if len(per_rank) != world_size:
        raise ValueError(
            f"the checkpoint holds the {what} of {len(per_rank)} rank(s), this run has {world_size}; an exact resume "
            f"needs the same number of ranks (trainer.devices x trainer.num_nodes)"
        )
    return per_rank[rank]
