"""The eval subcommand: argparse wiring, the three suites, outputs, and clear errors."""

import argparse
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from tirex_eval.cli import add_subparser, default_name, main

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
    assert board["n_tasks"].eq(2).all()
    assert "| monash_m1_yearly |" in capsys.readouterr().out


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
