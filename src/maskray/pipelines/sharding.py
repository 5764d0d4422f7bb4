"""``generate`` across several processes: each process draws its own share of the cases.

Under ``accelerate launch --num_processes N -m maskray generate ...`` the plan (every output case, in one fixed
order that every process computes alike) is dealt round-robin: process ``r`` takes plan entries ``r, r + N, ...``.
A case's pixels depend on its own seed alone (one generator per case, every batch padded to one shape), so the union
of the shards is byte-identical to a one-process run. The share is taken from the plan, not from what is still
missing, so that on ``--resume`` each process continues its own share (a file another process is writing at that
moment cannot move a case to a second process). The main process checks afterwards that every case exists, then
writes the records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TypeVar

from maskray.data.dataset import image_path, label_path
from maskray.distributed import barrier, world
from maskray.errors import MaskrayError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    rank: int
    count: int

    @classmethod
    def current(cls) -> "Shard":
        rank, count = world()
        return cls(rank, count)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def take(self, plan: Sequence[T]) -> list[T]:
        """This process's entries of ``plan``: every ``count``-th one, starting at ``rank``."""
        return list(plan[self.rank::self.count])

    def finish(self, out: Path, out_ids: Sequence[str]) -> bool:
        """Wait for every process; on the main process check that no case is missing. Returns ``is_main``."""
        barrier()
        if not self.is_main:
            return False
        missing = [c for c in out_ids if not (image_path(out, c).is_file() and label_path(out, c).is_file())]
        if missing:
            raise MaskrayError(f"{out}: {len(missing)} cases were not written (first: {missing[0]}); run the same "
                               f"command again with --resume")
        return True
