"""An installed wheel carries everything a checkout has: bundled weights, demo data, CUDA sources, configs."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-w", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    wheel = zipfile.ZipFile(next(out.glob("tirex-*.whl")))
    wheel.build_log = res.stdout + res.stderr
    return wheel


def test_build_prints_no_setuptools_warnings(wheel):
    # package discovery (data folders missing from the package list) and the licence table were two
    # sources of thousands of lines in `make demo`
    for marker in ("Warning", "is absent from the `packages` configuration", "project.license"):
        assert marker not in wheel.build_log, wheel.build_log[-3000:]


@pytest.mark.parametrize("pattern", [
    "tirex/weights/default/model.safetensors",
    "tirex/weights/default/config.json",
    "tirex/data/demo.csv",
    "tirex_cuda/*.cu",
    "tirex_pretraining/configs/*.yaml",
    "tirex_eval/*.py",
])
def test_wheel_contains(wheel, pattern):
    import fnmatch

    assert fnmatch.filter(wheel.namelist(), pattern), f"{pattern} missing from the wheel"


def test_wheel_has_console_script(wheel):
    entry = next(n for n in wheel.namelist() if n.endswith("entry_points.txt"))
    assert "tirex = tirex.cli:main" in wheel.read(entry).decode()
