"""A Ray worker's share of its machine: the CPU threads and the GPU memory fraction one trial, grid cell or refit
seed may use, applied once at the start of its task."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WorkerShare:
    """cpus: CPUs reserved for the task (its torch thread count); gpus: its GPU share (0 = none, 0.25 = a quarter)."""

    cpus: float
    gpus: float = 0.0

    def ray_resources(self) -> dict[str, float]:
        """The resource request Ray Tune and Ray tasks take: {"cpu": ..., "gpu": ...} (no gpu key without a share)."""
        return {"cpu": self.cpus, "gpu": self.gpus} if self.gpus else {"cpu": self.cpus}

    def apply(self) -> None:
        """Limit this process to its share: torch threads = CPUs, and a fractional GPU share caps the memory this
        process may allocate (other tasks packed on the same GPU keep theirs)."""
        torch.set_num_threads(max(1, int(self.cpus)))
        if 0 < self.gpus < 1 and torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(self.gpus)
