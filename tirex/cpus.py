"""How many CPUs this process may use: its affinity mask and its cgroup CPU quota (containers).

A container started with ``docker run --cpus 2`` or a Kubernetes CPU limit sees every core of its host
(``os.cpu_count()``, the affinity mask, and so torch's default thread count), but the kernel lets the
whole container run only ``quota / period`` CPUs' worth of time per period and stops all its threads for
the rest of the period once that is used up. Threads beyond the quota then only add waiting: a worker
that spins while it waits for the next job burns the quota the working threads need. ``cpu_budget()``
reads both limits once per process (Linux; elsewhere the CPU count; the quota rounded to whole CPUs, half
up) so that the compiled kernels (``tirex.inference.kernel_threads``), the command line, the server and
training can size their threads to what the process may really use.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


@dataclass(frozen=True)
class CpuBudget:
    cpus: int  # whole CPUs this process may use: min(affinity, the quota rounded half up), at least 1
    affinity: int  # CPUs in the affinity mask (os.cpu_count() where there is none)
    quota: float | None  # the tightest cgroup CPU quota in CPUs (quota / period), None = no quota
    quota_file: str | None  # where that quota was read


def _cgroup_paths(proc_cgroup: str) -> tuple[str | None, str | None]:
    """(cgroup v2 path, cgroup v1 path of the cpu controller) from /proc/self/cgroup's text."""
    v2 = v1 = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _mounts(mountinfo: str) -> list[tuple[str, str, str, set[str]]]:
    """(fs type, root inside the hierarchy, mount point, super options) of each cgroup mount."""
    mounts = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        root, point = (field.replace("\\040", " ") for field in fields[3:5])  # mountinfo escapes spaces
        mounts.append((tail[0], root, point, set(tail[2].split(","))))
    return mounts


def _directories(mount_root: str, mount_point: str, path: str) -> list[Path]:
    """The cgroup directory of ``path`` under a mount of the hierarchy at ``mount_root``, then its ancestors
    up to the mount point (a parent's limit applies to its children too)."""
    if mount_root != "/" and (path == mount_root or path.startswith(mount_root.rstrip("/") + "/")):
        path = path[len(mount_root.rstrip("/")):] or "/"
    elif mount_root != "/":  # the process is outside what this mount shows (e.g. a cgroup namespace)
        path = "/"
    parts = [p for p in path.split("/") if p and p != ".."]
    return [Path(mount_point, *parts[:n]) for n in range(len(parts), -1, -1)]


def _read_quota(directory: Path, version: str) -> float | None:
    """The CPU quota set in one cgroup directory, in CPUs; None where there is none (or it is unreadable)."""
    try:
        if version == "cgroup2":
            quota, _, period = (directory / "cpu.max").read_text().strip().partition(" ")
            if quota == "max":
                return None
            return int(quota) / int(period or 100000)
        quota = int((directory / "cpu.cfs_quota_us").read_text().strip())
        period = int((directory / "cpu.cfs_period_us").read_text().strip())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def read_budget(proc: Path = Path("/proc/self"), affinity: int | None = None) -> CpuBudget:
    """The budget from ``proc``'s ``cgroup`` and ``mountinfo`` files and the affinity mask (tests pass a
    folder of their own). The tightest quota of the process's cgroups and their ancestors, v1 and v2."""
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # not on every platform
            affinity = os.cpu_count() or 1
    best: tuple[float, str] | None = None
    try:
        v2_path, v1_path = _cgroup_paths((proc / "cgroup").read_text())
        mounts = _mounts((proc / "mountinfo").read_text())
    except OSError:
        v2_path = v1_path = None
        mounts = []
    for fstype, root, point, options in mounts:
        path = v2_path if fstype == "cgroup2" else v1_path if "cpu" in options else None
        if path is None:
            continue
        for directory in _directories(root, point, path):
            quota = _read_quota(directory, fstype)
            if quota is not None and (best is None or quota < best[0]):
                best = (quota, str(directory))
    # the quota rounded half up: on 2 Zen 3 cores a second thread lost under a quota of 1 and 1.25 CPUs
    # (batch-1 forecasts 1.33x / 1.20x slower) and won under 1.5 (1.10x faster; batch 32 1.30x)
    cpus = affinity if best is None else max(1, min(affinity, math.floor(best[0] + 0.5)))
    return CpuBudget(cpus, affinity, None if best is None else best[0], None if best is None else best[1])


@lru_cache(maxsize=1)
def cpu_budget() -> CpuBudget:
    """This process's CPU budget, read once (``cpu_budget.cache_clear()`` reads it again)."""
    return read_budget()


def capped_threads(threads: int, processes: int = 1) -> int:
    """``threads`` (e.g. torch's count), at most this process's share of the CPUs it may use when
    ``processes`` such processes run side by side, at least 1."""
    return max(1, min(int(threads), cpu_budget().cpus // max(1, processes)))


def limit_torch_threads(processes: int = 1) -> int:
    """For a process of our own (the command line, a server worker), before any work: torch's thread
    count capped at its share of the budget, the budget split evenly over ``processes`` processes that
    run side by side (a server's ``--workers``), at least 1 (torch's default counts the host's cores, also
    inside a container with a CPU quota). Library calls never change torch's process-wide setting: there
    only the compiled kernels cap their own threads (``tirex.inference.kernel_threads``). Returns the count."""
    import torch

    threads = torch.get_num_threads()
    capped = capped_threads(threads, processes)
    if capped < threads:
        torch.set_num_threads(capped)
    return capped


__all__ = ["CpuBudget", "capped_threads", "cpu_budget", "limit_torch_threads", "read_budget"]
