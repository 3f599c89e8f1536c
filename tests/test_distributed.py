"""tirex.distributed on a real local Ray instance (ray.init(num_cpus=2), started once for the module).

Each forecast_dataset call starts an actor pool (a few seconds: the replicas import torch and load the model),
so the cases share datasets where they can and use one replica unless the case is about several.
"""

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ray = pytest.importorskip("ray", reason="the Ray engine needs pip install 'tirex[distributed]'")

from conftest import assert_forecasts_agree  # noqa: E402
from tirex import load_model  # noqa: E402
from tirex.cli import main as tirex_main  # noqa: E402
from tirex.distributed import forecast_dataset, forecast_series  # noqa: E402
from tirex.distributed.engine import local_raylets, stop_leftover_workers  # noqa: E402
from tirex.distributed.worker import CRASH_ONCE_ENV  # noqa: E402
from tirex.io import InputError, read_table, to_long  # noqa: E402

# Ray Data's own copy of its context trips its deprecation checks; nothing of ours
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

H = 7
LEVEL_COLUMNS = ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"]


@pytest.fixture(scope="module", autouse=True)
def ray_address():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, logging_level=logging.WARNING)
    raylets = local_raylets()
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    stop_leftover_workers(raylets)  # a replica busy at shutdown can outlive its raylet (seen once)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="Linux /proc")
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs an affinity mask of 2 or more CPUs to narrow")
def test_a_local_instance_gets_the_cpus_this_process_may_use():
    """Ray counts every core, also outside the process's affinity mask (taskset, a Slurm CPU set): a local
    instance started by tirex in a process pinned to one CPU has 1 CPU, so one replica, not one per core."""
    code = (
        "import ray\n"
        "from tirex.distributed.engine import connect, local_raylets, stop_leftover_workers\n"
        "assert connect()\n"
        "raylets = local_raylets()\n"
        "print('CPU', ray.cluster_resources().get('CPU'), flush=True)\n"
        "ray.shutdown()\n"
        "stop_leftover_workers(raylets)\n"
    )
    first = min(os.sched_getaffinity(0))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # not the module's instance: a new one
    out = subprocess.run([sys.executable, "-c", code], preexec_fn=lambda: os.sched_setaffinity(0, {first}), env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "CPU 1.0" in out.stdout.splitlines(), out.stdout


def test_workers_left_behind_by_a_stopped_cluster_are_ended(tmp_path):
    """``local_raylets`` finds this process's raylet; ``stop_leftover_workers`` ends processes that carry a
    stopped raylet's PID in RAY_RAYLET_PID (one that ignores SIGTERM is killed), and no other process."""
    (raylet,) = local_raylets()
    assert b"raylet" in Path(f"/proc/{raylet}/cmdline").read_bytes()
    gone = subprocess.Popen(["sleep", "30"])  # stands in for a raylet that has exited
    gone.kill()
    gone.wait()
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    leftovers = [subprocess.Popen([sys.executable, "-c", stubborn], env={**os.environ, "RAY_RAYLET_PID": str(gone.pid)},
                                  stdout=subprocess.PIPE, text=True) for _ in range(2)]
    bystander = subprocess.Popen(["sleep", "30"], env={**os.environ, "RAY_RAYLET_PID": str(raylet)})
    for p in leftovers:
        assert p.stdout.readline().strip() == "ready"
    try:
        assert stop_leftover_workers({gone.pid}, wait=0.2) == 2
        for p in leftovers:
            assert p.wait(timeout=5) == -signal.SIGKILL
        assert bystander.poll() is None
        assert stop_leftover_workers(set()) == 0
    finally:
        bystander.kill()
        for p in leftovers:
            p.kill()


@pytest.fixture(scope="module")
def model():
    return load_model()


def series_frame(prefix: str, count: int, freq: str, seed: int, lengths=(30, 90)) -> pd.DataFrame:
    """Long rows (item_id, timestamp, target) of ``count`` random-walk series with seasonality."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        n = int(rng.integers(*lengths))
        t = np.arange(n)
        values = 20 + 5 * np.sin(2 * np.pi * t / 7) + rng.normal(0, 1, n).cumsum()
        frames.append(pd.DataFrame({"item_id": f"{prefix}{i}", "timestamp": pd.date_range("2021-03-01", periods=n,
                                                                                          freq=freq),
                                    "target": values}))
    return pd.concat(frames, ignore_index=True)


def write_partitions(source: Path, frames: list[pd.DataFrame]) -> Path:
    """One Parquet partition per frame: ``source/part-<k>.parquet``."""
    source.mkdir()
    for k, frame in enumerate(frames):
        frame.to_parquet(source / f"part-{k}.parquet", index=False)
    return source


def reference(frames: list[pd.DataFrame], folder: Path, model, **kwargs) -> pd.DataFrame:
    """What `tirex forecast` computes for all rows in one file: tirex.io validation, then model.forecast."""
    path = folder / "all.csv"
    pd.concat(frames).to_csv(path, index=False)
    long = to_long(read_table(path), path, "long")
    result = model.forecast(long, prediction_length=H, id_column="item_id", timestamp_column="timestamp",
                            target_column="target", **kwargs)
    return result.sort_values(["item_id", "timestamp"], ignore_index=True)


def read_output(folder: Path) -> pd.DataFrame:
    files = sorted(folder.rglob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files]).sort_values(["item_id", "timestamp"], ignore_index=True)


def assert_same_forecasts(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(got.columns) == list(expected.columns)
    assert got["item_id"].tolist() == expected["item_id"].tolist()
    assert (got["timestamp"].to_numpy() == expected["timestamp"].to_numpy()).all()
    values = expected.columns[2:]
    assert_forecasts_agree(got[values].to_numpy(), expected[values].to_numpy(), groups=expected["item_id"].to_numpy())


@pytest.fixture(scope="module")
def partitioned(tmp_path_factory):
    """Four partitions: Parquet and CSV, a hive-style subfolder, daily / hourly / monthly series, a date gap."""
    root = tmp_path_factory.mktemp("partitioned")
    frames = [series_frame("a", 6, "D", 1), series_frame("b", 5, "h", 2), series_frame("c", 4, "MS", 3),
              series_frame("d", 5, "D", 4)]
    frames[3] = frames[3].drop(index=frames[3].index[10])  # a missing day: a NaN on the series' grid
    (root / "region=north").mkdir()
    frames[0].to_parquet(root / "part-0.parquet", index=False)
    frames[1].to_csv(root / "part-1.csv", index=False)
    frames[2].to_parquet(root / "region=north" / "part-2.parquet", index=False)
    frames[3].to_csv(root / "region=north" / "part-3.csv", index=False)
    (root / "_SUCCESS").write_text("")  # written by Spark; ignored like every name starting with _ or .
    return root, frames


def test_partitions_forecast_exactly_like_tirex_forecast(partitioned, model, tmp_path):
    source, frames = partitioned
    out = tmp_path / "out"
    seen = []
    result = forecast_dataset(source, H, out, num_workers=2, progress=False, on_partition=seen.append)
    assert (result.partitions, result.written, result.skipped, result.series) == (4, 4, 0, 20)
    assert result.rows == 20 * H and result.workers == 2 and result.peak_worker_rss_bytes > 0
    assert len(seen) == 4 and sorted(s["series"] for s in seen) == [4, 5, 5, 6]
    # the output mirrors the input's partitioning, one Parquet file per input file
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*.parquet"))
    assert files == ["part-0.parquet", "part-1.parquet", "region=north/part-2.parquet", "region=north/part-3.parquet"]
    assert json.loads((out / "_SUCCESS").read_text())["series"] == 20
    assert not [p for p in out.rglob(".*")]  # no temporary files
    got = read_output(out)
    assert_same_forecasts(got, reference(frames, tmp_path, model))
    # each partition holds exactly its own series
    part2 = pd.read_parquet(out / "region=north" / "part-2.parquet")
    assert set(part2["item_id"]) == set(frames[2]["item_id"])
    # the same columns and dtypes as `tirex forecast -o file.parquet`
    assert tirex_main(["forecast", str(source / "part-0.parquet"), "-H", str(H), "-o", str(tmp_path / "cli.parquet")]) == 0
    cli = pd.read_parquet(tmp_path / "cli.parquet")
    assert cli.dtypes.to_dict() == got.dtypes.to_dict()
    assert list(cli.columns) == ["item_id", "timestamp", "mean", *LEVEL_COLUMNS]
    # and the same values for the same series as model.forecast on plain arrays
    series = [g["target"].to_numpy() for _, g in frames[0].groupby("item_id", sort=True)]
    quantiles, mean = model.forecast(series, prediction_length=H, output_type="numpy")
    mine = pd.read_parquet(out / "part-0.parquet").sort_values(["item_id", "timestamp"])
    items = mine["item_id"].to_numpy()
    assert_forecasts_agree(mine[LEVEL_COLUMNS].to_numpy(), quantiles.reshape(-1, 9), groups=items)
    assert_forecasts_agree(mine["mean"].to_numpy(), mean.reshape(-1), groups=items)
    # a rerun finds everything written and does no work
    again = forecast_dataset(source, H, out, progress=False)
    assert (again.written, again.skipped, again.workers) == (0, 4, 0)


def test_cli_joins_a_running_cluster_by_address(partitioned, model, ray_address, tmp_path):
    source, frames = partitioned
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for k, frame in enumerate(frames[:2]):
        frame.rename(columns={"item_id": "store", "timestamp": "day", "target": "sales"}).to_parquet(
            renamed / f"p{k}.parquet", index=False)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "tirex", "forecast", str(renamed), "-H", str(H), "--engine", "ray",
               "--address", ray_address, "--num-workers", "1", "--output", str(out), "--quantiles", "0.05,0.5,0.95",
               "--id-column", "store", "--timestamp-column", "day", "--target-column", "sales"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"for 11 series in 2 partitions to {out}" in done.stderr
    got = read_output(out)
    assert list(got.columns) == ["item_id", "timestamp", "mean", "0.05", "0.5", "0.95"]
    assert_same_forecasts(got, reference(frames[:2], tmp_path, model, quantile_levels=[0.05, 0.5, 0.95]))


def test_interrupted_run_resumes_without_redoing_or_losing_partitions(model, tmp_path):
    frames = [series_frame(f"s{k}_", 3, "D", 10 + k) for k in range(4)]
    source = write_partitions(tmp_path / "in", frames)
    out = tmp_path / "out"

    def interrupt(summary):
        raise KeyboardInterrupt  # as Ctrl-C after the first finished partition

    with pytest.raises(KeyboardInterrupt):
        forecast_dataset(source, H, out, num_workers=1, progress=False, on_partition=interrupt)
    done = sorted(out.glob("*.parquet"))
    assert done and not (out / "_SUCCESS").exists()  # the first partition at least; the replica may have run ahead
    for late in done[2:]:  # as if the interruption had come before these were written (timing-independent)
        late.unlink()
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    assert 1 <= len(written) <= 2
    (out / ".part-3.parquet.deadbeef.tmp").write_bytes(b"half a file from a killed writer")

    resumed = forecast_dataset(source, H, out, num_workers=1, progress=False)
    assert (resumed.skipped, resumed.written) == (len(written), 4 - len(written))
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet") if p.name in written} == written
    assert not list(out.glob(".*")) and (out / "_SUCCESS").exists()
    expected = reference(frames, tmp_path, model)
    assert_same_forecasts(read_output(out), expected)

    # a changed input partition is recomputed, the others are not
    changed = frames[1].assign(target=frames[1]["target"] + 100.0)
    changed.to_parquet(source / "part-1.parquet", index=False)
    third = forecast_dataset(source, H, out, num_workers=1, progress=False)
    assert (third.skipped, third.written) == (3, 1)
    assert_same_forecasts(read_output(out), reference([frames[0], changed, *frames[2:]], tmp_path, model))

    # other settings never mix with these results
    with pytest.raises(InputError, match="holds forecasts of another run .*horizon"):
        forecast_dataset(source, H + 1, out, progress=False)
    replaced = forecast_dataset(source, H + 1, out, num_workers=1, progress=False, overwrite=True)
    assert replaced.written == 4 and len(read_output(out)) == 12 * (H + 1)


def test_a_crashed_worker_is_retried_without_lost_or_duplicated_rows(model, tmp_path):
    frames = [series_frame(f"r{k}_", 4, "D", 20 + k) for k in range(2)]
    source = write_partitions(tmp_path / "in", frames)
    crashes = tmp_path / "crashes"
    crashes.mkdir()
    out = tmp_path / "out"
    # every replica process dies once per partition, after writing its temporary file and before the rename
    result = forecast_dataset(source, H, out, num_workers=1, progress=False,
                              ray_remote_args={"runtime_env": {"env_vars": {CRASH_ONCE_ENV: str(crashes)}}})
    assert sorted(p.name for p in crashes.iterdir()) == ["part-0.parquet.crashed", "part-1.parquet.crashed"]
    assert result.written == 2 and result.series == 8
    got = read_output(out)
    assert len(got) == 8 * H and not got.duplicated(["item_id", "timestamp"]).any()
    assert not list(out.glob(".*"))
    assert_same_forecasts(got, reference(frames, tmp_path, model))


def _bad(kind: str, path: Path) -> None:
    frame = series_frame("bad", 3, "D", 30)
    if kind == "unparseable timestamp":
        frame["timestamp"] = frame["timestamp"].astype(str)
        frame.loc[5, "timestamp"] = "not a date"
    elif kind == "duplicate (id, timestamp)":
        frame = pd.concat([frame, frame.iloc[[4]]])
    elif kind == "non-numeric target":
        frame["target"] = frame["target"].astype(object)
        frame.loc[7, "target"] = "12,5"
    elif kind == "series with one value":
        frame = pd.concat([frame, pd.DataFrame({"item_id": ["lonely"], "timestamp": [pd.Timestamp("2021-01-01")],
                                                "target": [1.0]})])
    elif kind == "empty partition" and path.suffix == ".csv":
        path.write_text("")  # zero bytes
        return
    elif kind == "empty partition":
        frame = frame.iloc[:0]  # a Parquet file with the columns and no rows
    frame.to_csv(path, index=False) if path.suffix == ".csv" else frame.to_parquet(path, index=False)


BAD_INPUTS = [("unparseable timestamp", ".csv", "'timestamp'"), ("duplicate (id, timestamp)", ".parquet", "'timestamp'"),
              ("non-numeric target", ".csv", "'target'"), ("series with one value", ".parquet", "'lonely'"),
              ("empty partition", ".parquet", "no data rows"), ("empty partition", ".csv", "the file is empty")]


@pytest.mark.parametrize("kind, suffix, names", BAD_INPUTS)
def test_bad_partitions_give_the_errors_of_tirex_forecast_and_leave_no_output(kind, suffix, names, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    series_frame("good", 3, "D", 31).to_parquet(source / "a-good.parquet", index=False)  # written first, then removed
    bad = source / f"b-bad{suffix}"
    _bad(kind, bad)
    with pytest.raises(InputError) as local:  # what `tirex forecast` says about the same file
        to_long(read_table(bad), bad, "long")
    out = tmp_path / "out"
    with pytest.raises(InputError) as distributed:
        forecast_dataset(source, H, out, num_workers=1, progress=False)
    assert str(distributed.value) == str(local.value)
    assert str(bad) in str(distributed.value) and names in str(distributed.value)
    assert not list(out.rglob("*.parquet")) and not (out / "_SUCCESS").exists() and not list(out.glob(".*"))


def test_a_series_split_over_two_files_is_refused_or_read_as_one_folder(model, tmp_path):
    source = tmp_path / "in"
    (source / "bucket=0").mkdir(parents=True)
    (source / "bucket=1").mkdir()
    frame = series_frame("x", 2, "D", 40, lengths=(40, 41))
    frame.iloc[::2].to_parquet(source / "bucket=0" / "even.parquet", index=False)   # every series in both files
    frame.iloc[1::2].to_csv(source / "bucket=0" / "odd.csv", index=False)
    other = series_frame("y", 3, "D", 41)
    other.to_parquet(source / "bucket=1" / "part-0.parquet", index=False)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"series 'x\d' \(column 'item_id'\) appears in two partitions.*even.*odd"):
        forecast_dataset(source, H, out, num_workers=1, progress=False)
    assert not list(out.rglob("*.parquet")) and not (out / "_SUCCESS").exists()
    # a hive layout (several files per bucket folder, each series within one folder): one partition per folder
    result = forecast_dataset(source, H, out, num_workers=1, progress=False, partition_by="folder")
    assert (result.partitions, result.series) == (2, 5)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.parquet")) == [
        "bucket=0/forecast.parquet", "bucket=1/forecast.parquet"]
    assert_same_forecasts(read_output(out), reference([frame, other], tmp_path, model))


def test_options_and_locations_are_checked_before_any_work(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    with pytest.raises(InputError, match="no .parquet or .csv files"):
        forecast_dataset(source, H, tmp_path / "out")
    (source / "notes.json").write_text("{}")
    with pytest.raises(InputError, match=r"neither \.parquet nor \.csv: \['notes.json'\]"):
        forecast_dataset(source, H, tmp_path / "out")
    with pytest.raises(InputError, match="no such file or folder"):
        forecast_dataset(tmp_path / "missing", H, tmp_path / "out")
    (source / "notes.json").unlink()
    series_frame("o", 1, "D", 50).to_parquet(source / "p.parquet", index=False)
    with pytest.raises(InputError, match="overlap"):
        forecast_dataset(source, H, source / "forecasts")
    with pytest.raises(ValueError, match="prediction_length"):
        forecast_dataset(source, 0, tmp_path / "out")
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        forecast_dataset(source, H, tmp_path / "out", quantile_levels=[0.5, 1.5])
    assert tirex_main(["forecast", str(source), "-H", "3", "--engine", "ray"]) == 2  # no --output
    assert tirex_main(["forecast", str(source), "-H", "3", "--engine", "ray", "-o", "x.csv"]) == 2
    assert tirex_main(["forecast", str(source), "-H", "3", "--engine", "ray", "-o", "x", "--layout", "wide"]) == 2
    assert tirex_main(["forecast", "s3://bucket/sales.csv", "-H", "3"]) == 2  # URIs need the Ray engine


def test_without_ray_the_message_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    from tirex.distributed import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    with pytest.raises(ImportError, match=r"pip install 'tirex\[distributed\]'"):
        require_ray()
    path = tmp_path / "p.parquet"
    series_frame("o", 1, "D", 50).to_parquet(path, index=False)
    assert tirex_main(["forecast", str(path), "-H", "3", "--engine", "ray", "-o", str(tmp_path / "out")]) == 2
    assert "pip install 'tirex[distributed]'" in capsys.readouterr().err


def test_in_memory_series_equal_model_forecast(model):
    rng = np.random.default_rng(5)
    series = [rng.normal(size=int(n)).cumsum() for n in rng.integers(5, 700, size=23)]
    series[3][:4] = np.nan
    quantiles, mean = forecast_series(series, 13, [0.05, 0.5, 0.9], model, chunk_size=5, num_workers=2)
    expected_q, expected_mean = model.forecast(series, 13, quantile_levels=[0.05, 0.5, 0.9], output_type="numpy")
    assert quantiles.shape == (23, 13, 3) and mean.shape == (23, 13)
    assert_forecasts_agree(quantiles, expected_q)
    assert_forecasts_agree(mean, expected_mean)
    with pytest.raises(ValueError, match="series 1 is empty"):
        forecast_series([np.ones(5), np.array([])], 3, model=model)


def test_eval_harnesses_forecast_through_ray_with_the_same_scores(tmp_path):
    pytest.importorskip("fev")
    from tirex_eval.cli import main as eval_main

    args = ["--suite", "offline", "--tasks", "monash_m1_yearly", "--no-progress", "--data-dir", str(tmp_path / "data")]
    assert eval_main([*args, "--output-dir", str(tmp_path / "local")]) == 0
    assert eval_main([*args, "--output-dir", str(tmp_path / "ray"), "--engine", "ray"]) == 0
    local, distributed = (pd.read_csv(tmp_path / name / "results.csv") for name in ("local", "ray"))
    for metric in ("MASE", "WQL"):
        assert distributed[metric].iloc[0] == pytest.approx(local[metric].iloc[0], rel=1e-6)
    assert eval_main([*args, "--output-dir", str(tmp_path / "sn"), "--engine", "ray", "--model", "seasonal_naive"]) == 2


def test_gift_eval_forecasts_through_ray_with_the_same_results(tmp_path):
    pytest.importorskip("datasets")
    from test_eval_gift import TINY, write_gift_folder
    from tirex_eval.forecasters import make_forecaster
    from tirex_eval.gift_eval import run_gift_eval

    for seed, name in enumerate(("m4_yearly/A/short", "hospital/M/short")):
        write_gift_folder(tmp_path / "gift", *TINY[name], seed)
    configs = ["m4_yearly/A/short", "hospital/M/short"]
    results = {engine: run_gift_eval(make_forecaster(None, name="tirex", engine=engine), tmp_path / "gift",
                                     tmp_path / engine, configs=configs, model_name="tirex", progress=False)
               for engine in ("local", "ray")}
    metrics = [c for c in results["local"].columns if c.startswith("eval_metrics/")]
    np.testing.assert_allclose(results["ray"][metrics].to_numpy(float), results["local"][metrics].to_numpy(float),
                               rtol=1e-6)
