"""The `tirex` command line: forecasts from files, and one-line errors with exit code 2 for bad input."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

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


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "tirex", "forecast", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for option in ("--horizon", "--quantiles", "--model", "--output", "--plot", "--layout"):
        assert option in out.stdout
