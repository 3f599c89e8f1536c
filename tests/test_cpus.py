"""The CPUs a process may use (tirex.cpus): affinity and cgroup CPU quotas, and the threads sized to them."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tirex import cpus, inference
from tirex.cpus import CpuBudget, read_budget

ROOT = Path(__file__).resolve().parents[1]


def fake_proc(tmp_path, cgroup: str, mounts: list[tuple[str, str, str, str]], files: dict[str, str]) -> Path:
    """A /proc/self of our own: ``cgroup``'s text, mountinfo lines for (fstype, root, mount point, options)
    and cgroup files (path -> text) under tmp_path."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    lines = [f"{30 + i} 23 0:{40 + i} {root} {point.replace(' ', chr(92) + '040')} rw,relatime - {fstype} {fstype} "
             f"rw,{options}" for i, (fstype, root, point, options) in enumerate(mounts)]
    lines.insert(0, "22 1 8:1 / / rw,relatime - ext4 /dev/root rw")
    (proc / "mountinfo").write_text("\n".join(lines) + "\n")
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return proc


def test_cgroup_v2_quota_of_a_container(tmp_path):
    proc = fake_proc(tmp_path, "0::/\n", [("cgroup2", "/", str(tmp_path / "cg"), "nsdelegate")],
                     {"cg/cpu.max": "250000 100000\n"})
    assert read_budget(proc, affinity=16) == CpuBudget(3, 16, 2.5, str(tmp_path / "cg"))  # rounded half up
    (tmp_path / "cg" / "cpu.max").write_text("225000 100000\n")
    assert read_budget(proc, affinity=16).cpus == 2
    (tmp_path / "cg" / "cpu.max").write_text("125000\n")  # no period: the default 100000
    assert read_budget(proc, affinity=16) == CpuBudget(1, 16, 1.25, str(tmp_path / "cg"))


def test_cgroup_v2_the_tightest_ancestor_counts_and_no_limit_is_none(tmp_path):
    base = tmp_path / "sys fs"  # a mount point with a space (escaped in mountinfo)
    proc = fake_proc(tmp_path, "0::/kubepods/pod1/ctr\n", [("cgroup2", "/", str(base), "nsdelegate")], {
        "sys fs/cpu.max": "max 100000\n",
        "sys fs/kubepods/cpu.max": "max 100000\n",
        "sys fs/kubepods/pod1/cpu.max": "150000 100000\n",
        "sys fs/kubepods/pod1/ctr/cpu.max": "400000 100000\n",
    })
    assert read_budget(proc, affinity=64) == CpuBudget(2, 64, 1.5, str(base / "kubepods" / "pod1"))
    (base / "kubepods" / "pod1" / "cpu.max").write_text("max 100000\n")
    (base / "kubepods" / "pod1" / "ctr" / "cpu.max").write_text("max 100000\n")
    assert read_budget(proc, affinity=64) == CpuBudget(64, 64, None, None)


def test_cgroup_v1_quota_seen_from_inside_and_outside_the_container(tmp_path):
    files = {"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}
    # inside: the mount shows the container's own cgroup (root /docker/abc) at the mount point
    proc = fake_proc(tmp_path, "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n",
                     [("cgroup", "/docker/abc", str(tmp_path / "cpu"), "cpu,cpuacct"),
                      ("cgroup", "/docker/abc", str(tmp_path / "memory"), "memory")], files)
    assert read_budget(proc, affinity=8) == CpuBudget(3, 8, 3.0, str(tmp_path / "cpu"))
    # the affinity mask can be tighter than the quota; a quota below one CPU still leaves one thread
    assert read_budget(proc, affinity=2).cpus == 2
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("40000\n")
    assert read_budget(proc, affinity=8) == CpuBudget(1, 8, 0.4, str(tmp_path / "cpu"))
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # v1's "no limit"
    assert read_budget(proc, affinity=8) == CpuBudget(8, 8, None, None)


def test_cgroup_v1_quota_on_the_host_view_of_the_hierarchy(tmp_path):
    proc = fake_proc(tmp_path, "2:cpu:/docker/abc\n", [("cgroup", "/", str(tmp_path / "cpu"), "cpu")], {
        "cpu/docker/abc/cpu.cfs_quota_us": "200000\n", "cpu/docker/abc/cpu.cfs_period_us": "100000\n",
    })
    assert read_budget(proc, affinity=32) == CpuBudget(2, 32, 2.0, str(tmp_path / "cpu" / "docker" / "abc"))


@pytest.mark.parametrize("broken", ["no files", "garbage", "no cgroup mounts"])
def test_unreadable_or_missing_cgroup_files_mean_no_quota(tmp_path, broken):
    if broken == "no files":
        proc = tmp_path / "nothing"
    elif broken == "garbage":
        proc = fake_proc(tmp_path, "0::/\n", [("cgroup2", "/", str(tmp_path / "cg"), "x")], {"cg/cpu.max": "lots\n"})
    else:
        proc = fake_proc(tmp_path, "0::/\n", [], {})
    assert read_budget(proc, affinity=4) == CpuBudget(4, 4, None, None)


def test_this_process_has_a_budget():
    budget = cpus.cpu_budget()
    assert 1 <= budget.cpus <= budget.affinity <= (os.cpu_count() or 1)


def test_kernel_threads_are_torchs_count_capped_at_the_budget(monkeypatch):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(cpus, "cpu_budget", lambda: CpuBudget(1, 64, 1.5, "cpu.max"))
        assert inference.kernel_threads() == 1
        assert torch.get_num_threads() == 2  # torch's process-wide setting is never changed by the library
        monkeypatch.setattr(cpus, "cpu_budget", lambda: CpuBudget(64, 64, None, None))
        assert inference.kernel_threads() == 2
        torch.set_num_threads(1)
        assert inference.kernel_threads() == 1
    finally:
        torch.set_num_threads(threads)


def _quota_group():
    spec = importlib.util.spec_from_file_location("bench_cpu_quota", ROOT / "benchmarks" / "bench_cpu_quota.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.quota_group


def test_a_real_cgroup_quota_caps_the_kernels_and_the_command_line():
    """A process started in a real cgroup with a 1-CPU quota (as ``docker run --cpus 1``) reads it, its kernels
    use one thread whatever torch's count, and limit_torch_threads (what the command line and the server call)
    sets torch's count to it."""
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("making a cgroup needs root")
    try:
        group = _quota_group()(1.0, name="tirex_test")
        join = group.__enter__()
    except OSError as exc:
        pytest.skip(f"no writable cgroup cpu controller here: {exc}")
    try:  # moving a process into it can still be refused (a cgroup namespace, delegation rules)
        subprocess.run(["true"], preexec_fn=join, check=True, timeout=30)
    except (subprocess.SubprocessError, OSError) as exc:
        group.__exit__(None, None, None)
        pytest.skip(f"cannot move a process into a new cgroup here: {exc}")
    code = (
        "import json, torch; torch.set_num_threads(2)\n"
        "from tirex import cpus, inference\n"
        "before = inference.kernel_threads(), torch.get_num_threads()\n"
        "cpus.limit_torch_threads()\n"
        "print(json.dumps({'budget': vars(cpus.cpu_budget()), 'kernel': before[0], 'torch_before': before[1],"
        " 'torch_after': torch.get_num_threads()}))\n"
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], preexec_fn=join, capture_output=True, text=True,
                             timeout=120, cwd=ROOT)
    finally:
        group.__exit__(None, None, None)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["budget"]["quota"] == 1.0 and seen["budget"]["cpus"] == 1, seen
    assert seen["kernel"] == 1 and seen["torch_before"] == 2 and seen["torch_after"] == 1, seen


def test_limit_torch_threads_splits_the_budget_over_processes_and_never_raises_torchs_count(monkeypatch):
    threads = torch.get_num_threads()
    try:
        monkeypatch.setattr(cpus, "cpu_budget", lambda: CpuBudget(4, 64, 4.0, "cpu.max"))
        torch.set_num_threads(8)
        assert cpus.limit_torch_threads() == 4 and torch.get_num_threads() == 4
        torch.set_num_threads(8)
        assert cpus.limit_torch_threads(processes=3) == 1 and torch.get_num_threads() == 1  # a server's --workers 3
        torch.set_num_threads(2)
        assert cpus.limit_torch_threads() == 2 and torch.get_num_threads() == 2
        assert cpus.limit_torch_threads(processes=8) == 1  # more processes than CPUs: one thread each
    finally:
        torch.set_num_threads(threads)
