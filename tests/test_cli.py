"""The `tirex` command line: forecasts from files, and one-line errors with exit code 2 for bad input."""

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from tirex.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tirex import ModelConfig, TiRexModel

    path = tmp_path_factory.mktemp("model")
    TiRexModel(ModelConfig(embed_dim=16, num_heads=2, num_blocks=1, input_ff_dim=32, context_length=128)).save_pretrained(path)
    return str(path)


def long_frame(n=60, ids=("a", "b")):
    return pd.concat(
        pd.DataFrame({"item_id": i, "timestamp": pd.date_range("2024-01-01", periods=n, freq="D"),
                      "target": np.sin(np.arange(n) / 3) + k})
        for k, i in enumerate(ids)
    )


def test_forecast_long_csv_to_csv_and_plot(tmp_path, model_dir, capsys):
    src = tmp_path / "in.csv"
    long_frame().to_csv(src, index=False)
    out, png = tmp_path / "out.csv", tmp_path / "fan.png"
    code = main(["forecast", str(src), "--horizon", "7", "--model", model_dir, "--output", str(out),
                 "--plot", str(png), "--quantiles", "0.1,0.5,0.9"])
    assert code == 0
    res = pd.read_csv(out)
    assert list(res.columns) == ["item_id", "timestamp", "mean", "0.1", "0.5", "0.9"]
    assert len(res) == 14 and res["timestamp"].iloc[0] == "2024-03-01"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_forecast_wide_parquet_prints_table(tmp_path, model_dir, capsys):
    wide = long_frame().pivot(index="timestamp", columns="item_id", values="target").reset_index()
    src = tmp_path / "wide.parquet"
    wide.to_parquet(src)
    assert main(["forecast", str(src), "-H", "3", "--model", model_dir]) == 0
    text = capsys.readouterr().out
    assert "a  (first 3 of 3 steps)" in text and "b  (first 3" in text


def test_gaps_in_a_regular_series_become_missing_values(tmp_path, model_dir):
    df = long_frame(ids=("a",)).drop(index=[10, 11])
    src = tmp_path / "gaps.csv"
    df.to_csv(src, index=False)
    out = tmp_path / "out.csv"
    assert main(["forecast", str(src), "-H", "2", "--model", model_dir, "-o", str(out)]) == 0


def _bad(tmp_path, name, content):
    src = tmp_path / name
    if isinstance(content, pd.DataFrame):
        content.to_csv(src, index=False)
    else:
        src.write_text(content)
    return src


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.csv", "no such file"),
        (lambda p: _bad(p, "empty.csv", ""), "empty"),
        (lambda p: _bad(p, "header.csv", "item_id,timestamp,target\n"), "no data rows"),
        (lambda p: _bad(p, "cols.csv", pd.DataFrame({"when": ["2024-01-01"], "v": [1]})), "no timestamp column"),
        (lambda p: _bad(p, "ts.csv", long_frame().assign(timestamp="yesterday")), "not a timestamp"),
        (lambda p: _bad(p, "num.csv", long_frame().astype({"target": object}).assign(target="abc")), "non-numeric"),
        (lambda p: _bad(p, "dup.csv", pd.concat([long_frame(), long_frame().head(1)])), "duplicate timestamp"),
        (lambda p: _bad(p, "irr.csv", pd.DataFrame({"timestamp": ["2024-01-01", "2024-01-02", "2024-01-04 05:00", "2024-01-09"],
                                                       "target": [1, 2, 3, 4]})), "irregular timestamps"),
        (lambda p: _bad(p, "x.xlsx", "junk"), "unknown file type"),
    ],
)
def test_bad_input_one_line_exit_2_no_output(tmp_path, model_dir, capsys, make, message):
    src = make(tmp_path)
    out = tmp_path / "out.csv"
    code = main(["forecast", str(src), "-H", "3", "--model", model_dir, "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and str(src.name) in err
    assert len(err.splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".out.csv*"))


def test_bad_options_exit_2(tmp_path, model_dir, capsys):
    src = _bad(tmp_path, "ok.csv", long_frame())
    with pytest.raises(SystemExit) as exc:
        main(["forecast", str(src), "-H", "0"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["forecast", str(src), "-H", "3", "--quantiles", "0.5,1.5"])
    assert exc.value.code == 2
    assert main(["forecast", str(src), "-H", "3", "--model", str(tmp_path / "nope")]) == 2
    assert "unknown model source" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["forecast", str(src), "-H", "3", "--model", model_dir, "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert "cuda" in err and "AssertionError" not in err and len(err.strip().splitlines()) == 1


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "tirex", "forecast", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for option in ("--horizon", "--quantiles", "--model", "--output", "--plot", "--layout"):
        assert option in out.stdout


def test_info_says_what_runs_here_and_why(default_level):
    """`tirex info` reports the dispatch this process makes (level, matmuls, why), the compiler and the CPUs,
    as text and as JSON; with the kernels switched off it says so."""
    from tirex import cpu_kernel
    from tirex.cpus import cpu_budget

    env = {k: v for k, v in os.environ.items() if k not in ("TIREX_CPU_ISA", "TIREX_CPU_GEMM", "TIREX_CPU_KERNEL")}
    out = subprocess.run([sys.executable, "-m", "tirex", "info", "--json"], capture_output=True, text=True, timeout=600,
                         env=env)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["cpu"]["level"] == default_level and info["cpu"]["model"] == cpu_kernel.cpu_model()
    assert info["cpus"]["cpus"] == cpu_budget().cpus and info["torch"] == torch.__version__
    assert [c.split()[0] for c in info["compilers"]] == [c[0] for c in cpu_kernel._compilers()]
    gpus = [torch.cuda.get_device_name(n) for n in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    assert info["cuda"]["gpus"] == gpus and info["cuda"]["kernels"] in (True, False)

    text = subprocess.run([sys.executable, "-m", "tirex", "info"], capture_output=True, text=True, timeout=600,
                          env={**env, "TIREX_CPU_KERNEL": "0"})
    assert text.returncode == 0, text.stderr
    assert "kernel level    none" in text.stdout and "recurrence      torch loop" in text.stdout
    assert "TIREX_CPU_KERNEL=0" in text.stdout and text.stderr == ""


# ---------------------------------------------------------------------------- issue 15: no silent wrong answers
def daily(n=60):
    return pd.date_range("2024-01-01", periods=n, freq="D")


def test_epoch_second_timestamps_are_read_as_seconds(tmp_path, model_dir):
    """Item 3: integer epoch seconds were read as nanoseconds (forecasts stamped 1970-01-01 00:00:01.6)."""
    src = tmp_path / "epoch.csv"
    pd.DataFrame({"timestamp": daily().as_unit("s").asi8, "target": np.sin(np.arange(60) / 3)}).to_csv(src, index=False)
    out = tmp_path / "out.csv"
    assert main(["forecast", str(src), "-H", "2", "--model", model_dir, "-o", str(out)]) == 0
    assert pd.read_csv(out)["timestamp"].tolist() == ["2024-03-01", "2024-03-02"]


def test_wide_file_with_a_target_named_column_is_not_read_as_long(tmp_path, model_dir, capsys):
    """Item 4: a wide CSV with a column named y/value/target lost its other series."""
    src = tmp_path / "wide.csv"
    pd.DataFrame({"date": daily(), "y": np.arange(60.0), "sales": np.arange(60.0) * 2}).to_csv(src, index=False)
    out = tmp_path / "out.csv"
    assert main(["forecast", str(src), "-H", "2", "--model", model_dir, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--layout wide" in err and "wide.csv" in err and not out.exists()
    assert main(["forecast", str(src), "-H", "2", "--model", model_dir, "-o", str(out), "--layout", "wide"]) == 0
    assert pd.read_csv(out)["item_id"].tolist() == ["y", "y", "sales", "sales"]


def test_a_horizon_past_2262_is_a_clear_error(tmp_path, model_dir, capsys, monkeypatch):
    """Item 6: -H 100000 on daily data failed with pandas' "Cannot generate range with start=... periods=100001"."""
    src = _bad(tmp_path, "daily.csv", long_frame())
    monkeypatch.setattr("tirex.cli._load", lambda *a: pytest.fail("the model is loaded before the horizon is checked"))
    assert main(["forecast", str(src), "-H", "100000", "--model", model_dir]) == 2
    err = capsys.readouterr().err.strip()
    assert "runs past 2262-04-11" in err and "daily.csv" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["forecast", str(src), "-H", "100001"])
    assert "at most 100,000" in capsys.readouterr().err


@pytest.mark.parametrize("make, message", [
    (lambda p: _bad(p, "long.csv", long_frame()), "looks like a long table"),  # item 8: --layout wide on a long file
])
def test_wide_layout_on_a_long_file(tmp_path, model_dir, capsys, make, message):
    src = make(tmp_path)
    assert main(["forecast", str(src), "-H", "2", "--model", model_dir, "--layout", "wide"]) == 2
    err = capsys.readouterr().err
    assert message in err and "melt" not in err


def test_semicolon_csv_with_decimal_commas(tmp_path, model_dir):
    """Item 8: a semicolon CSV said "no timestamp column", with no hint."""
    frame = long_frame()
    comma, semi = tmp_path / "comma.csv", tmp_path / "semi.csv"
    frame.to_csv(comma, index=False)
    frame.to_csv(semi, index=False, sep=";", decimal=",")
    outs = [tmp_path / "a.csv", tmp_path / "b.csv"]
    for src, out in zip((comma, semi), outs):
        assert main(["forecast", str(src), "-H", "3", "--model", model_dir, "-o", str(out)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(outs[0]), pd.read_csv(outs[1]))


def test_output_and_plot_formats_follow_the_suffix(tmp_path, model_dir, capsys):
    """Item 8: -o out.json wrote CSV text and --plot out.jpg wrote PNG bytes."""
    src = _bad(tmp_path, "in.csv", long_frame())
    out, jpg = tmp_path / "out.json", tmp_path / "fan.jpg"
    assert main(["forecast", str(src), "-H", "2", "--model", model_dir, "-o", str(out), "--plot", str(jpg)]) == 0
    records = json.loads(out.read_text())
    assert len(records) == 4 and records[0]["item_id"] == "a" and records[0]["timestamp"].startswith("2024-03-01")
    assert jpg.read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG
    old = os.umask(0o022)
    try:
        assert main(["forecast", str(src), "-H", "2", "--model", model_dir, "-o", str(tmp_path / "o.parquet")]) == 0
    finally:
        os.umask(old)
    assert pd.read_parquet(tmp_path / "o.parquet").shape == (4, 12)
    assert stat.S_IMODE((tmp_path / "o.parquet").stat().st_mode) == 0o644
    for option, name, message in (("-o", "out.xlsx", "unknown format"), ("--plot", "fan.xyz", "cannot write")):
        assert main(["forecast", str(src), "-H", "2", "--model", model_dir, option, str(tmp_path / name)]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / name).exists()


def test_cli_and_api_agree(tmp_path, model_dir):
    """Item 9: the same gappy table gives the same forecasts from the file and from a DataFrame."""
    from tirex import load_model

    frame = long_frame().drop(index=[10, 11])
    src = _bad(tmp_path, "gaps.csv", frame)
    out = tmp_path / "out.csv"
    assert main(["forecast", str(src), "-H", "3", "--model", model_dir, "-o", str(out), "--quantiles", "0.1,0.5"]) == 0
    api = load_model(model_dir).forecast(frame, prediction_length=3, quantile_levels=[0.1, 0.5])
    np.testing.assert_allclose(pd.read_csv(out)[["0.1", "0.5"]].to_numpy(), api[["0.1", "0.5"]].to_numpy(), rtol=1e-5)


def test_finetune_without_the_training_extra_says_so(tmp_path):
    """Item 8: `tirex finetune data.csv --horizon 5` without Lightning said "unrecognized arguments"."""
    code = ("import sys; sys.modules['lightning'] = None\n"
            "from tirex.cli import main\n"
            "sys.exit(main(['finetune', 'data.csv', '--horizon', '5']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "pip install 'tirex[pretrain]'" in out.stderr and "unrecognized" not in out.stderr


def test_fan_chart_has_axis_labels_readable_hourly_ticks_and_no_empty_panel():
    """Item 10: hourly charts had colliding x-tick labels, no axis labels, and an empty fourth panel."""
    from tirex.plotting import fan_chart_figure

    stamps = pd.date_range("2024-05-01", periods=300, freq="h")
    history = pd.concat(pd.DataFrame({"item_id": k, "timestamp": stamps, "target": np.sin(np.arange(300) / 4) + i})
                        for i, k in enumerate("abc"))
    future = pd.date_range(stamps[-1] + pd.Timedelta(hours=1), periods=48, freq="h")
    forecast = pd.concat(pd.DataFrame({"item_id": k, "timestamp": future, **{c: np.zeros(48) + i for c in
                                       ("0.1", "0.2", "0.5", "0.8", "0.9")}}) for i, k in enumerate("abc"))
    fig = fan_chart_figure(history, forecast)
    assert len(fig.axes) == 3  # one panel per series, none empty
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel()
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
        assert len(boxes) >= 3
        assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:])), "tick labels overlap"
    five = fan_chart_figure(pd.concat([history.assign(item_id=history["item_id"] + s) for s in "12"]).head(1500),
                            pd.concat([forecast.assign(item_id=forecast["item_id"] + s) for s in "12"]).head(240))
    assert len(five.axes) == 5  # two columns, the fifth panel spans the last row
