"""CPU threads for training: a default that does not collapse when the machine is shared."""

from __future__ import annotations

import os

import torch

from tirex.cpus import cpu_budget

SMALL_MACHINE_CPUS = 4  # at most this many logical CPUs: train on one thread unless told otherwise


def training_threads(requested: int | None = None, on_cpu: bool = True) -> int:
    """Torch intra-op threads for a training run.

    ``requested`` (``--num-threads``, ``trainer.num_threads``) wins. On a GPU run, torch's default.
    On CPU: one thread where this process may use at most 4 CPUs; elsewhere the CPUs that are not
    already busy (the CPUs it may use - its affinity mask and a container's CPU quota, ``tirex.cpus`` -
    minus the 1-minute load average, at least 1), at most torch's default. Why: torch's threads meet at
    a barrier in every operation, so a step runs at the pace of its slowest thread; when another
    process holds one of the cores, that thread is descheduled and every step waits for it. On a 2-core
    machine running one other job, ``tirex pretrain --config tiny_cpu`` took about 9 minutes for 300
    steps with torch's two threads and 14 s with one.
    """
    if requested:
        return int(requested)
    default = torch.get_num_threads()
    if not on_cpu:
        return default
    cpus = cpu_budget().cpus
    if cpus <= SMALL_MACHINE_CPUS:
        return 1
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        busy = 0.0
    return max(1, min(default, int(cpus - busy)))


def trains_on_cpu(accelerator: str | None) -> bool:
    """Whether a Lightning ``accelerator`` setting trains on the CPU here."""
    return accelerator == "cpu" or (accelerator in (None, "auto") and not torch.cuda.is_available())
