"""The validation layer (tirex.validation for settings and arrays, tirex.io for tables) on its own."""

import gzip
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from tirex.io import InputError, InputTypeError, future_timestamps, parse_timestamps, read_table, to_long, validate_table
from tirex.timestamps import infer_offset
from tirex.validation import (
    MAX_PREDICTION_LENGTH,
    as_float_array,
    check_device,
    check_prediction_length,
    check_quantile_levels,
    check_update,
    check_tokens,
    to_series_list,
)

from conftest import tiny_model


# ------------------------------------------------------------------------------------------ arrays, lists
def test_series_from_every_array_like():
    assert [s.tolist() for s in to_series_list([1, 2, 3])] == [[1.0, 2.0, 3.0]]
    ragged = to_series_list([[1.0, None, 3.0], np.arange(2), torch.ones(4, dtype=torch.bfloat16)])
    assert [len(s) for s in ragged] == [3, 2, 4] and all(s.dtype == torch.float64 for s in ragged)
    assert torch.isnan(ragged[0][1])
    assert len(to_series_list(np.zeros((3, 5), dtype=np.int16))) == 3
    assert to_series_list(np.array([True, False]))[0].tolist() == [1.0, 0.0]
    # object arrays of numbers and None (what JSON and pandas give) are numbers with missing values
    assert to_series_list(np.array([1, None, 2.5], dtype=object))[0][2] == 2.5
    assert to_series_list(pd.array([1, None, 3], dtype="Int64").to_numpy())[0].isnan().tolist() == [False, True, False]


@pytest.mark.parametrize("context, error, match", [
    (np.array(["1", "2"]), TypeError, "non-numeric"),          # numeric strings are text, as in the README table
    (np.array([1, "2"], dtype=object), TypeError, "text"),
    ([[1.0, 2.0], ["a", "b"]], TypeError, "series 1"),
    (np.array([1 + 2j]), TypeError, "complex"),
    (np.array(["2024-01-01"], dtype="datetime64[D]"), TypeError, "datetimes"),
    ({"a": [1, 2]}, TypeError, "dict"),
    ((x for x in range(3)), TypeError, "not supported"),
    ("1,2,3", TypeError, "not supported"),
    ([1.0, [2.0]], TypeError, "mixes numbers and sequences"),
    ([], ValueError, "empty list"),
    (np.float64(3.0), ValueError, "single number"),
    (np.zeros((0, 4)), ValueError, "no series"),
    (np.zeros((2, 0)), ValueError, "series 0 is empty"),
    (np.zeros((2, 2, 2)), ValueError, "3-D"),
    ([np.zeros((2, 2))], ValueError, "must be 1-D"),
    ([[1.0, 2.0], [[1.0], [2.0, 3.0]]], ValueError, "not a regular array"),
])
def test_bad_array_input_is_named(context, error, match):
    with pytest.raises(error, match=match):
        to_series_list(context)


def test_inf_is_missing_with_a_warning_and_a_column_vector_warns():
    with pytest.warns(UserWarning, match="inf"):
        (s,) = to_series_list(np.array([1.0, np.inf, -np.inf]))
    assert s.isnan().tolist() == [False, True, True]
    with pytest.warns(UserWarning, match="series of one value each"):
        to_series_list(np.ones((5, 1)))


def test_float128_beyond_float64_becomes_missing():
    if not hasattr(np, "float128"):
        pytest.skip("no float128 on this platform")
    with pytest.warns(UserWarning, match="inf"):
        (s,) = to_series_list(np.array([1.0, 1e4000], dtype=np.float128))
    assert s.isnan().tolist() == [False, True]


def test_settings():
    assert check_prediction_length(np.int32(5)) == 5
    with pytest.raises(TypeError, match=r"int\('5'\)"):
        check_prediction_length("5")
    with pytest.raises(ValueError, match="maximum"):
        check_prediction_length(MAX_PREDICTION_LENGTH + 1)
    assert check_quantile_levels(torch.tensor([0.25, 0.75])) == (0.25, 0.75)
    for bad, error in ((["0.5"], TypeError), ([True], TypeError), ("0.5", TypeError), (0.5, TypeError),
                       ([0.5, 0.5], ValueError), ([float("nan")], ValueError), ([], ValueError)):
        with pytest.raises(error):
            check_quantile_levels(bad)


def test_devices():
    assert check_device("cpu") == torch.device("cpu") and check_device(None) is None
    with pytest.raises(ValueError, match="not a torch device"):
        check_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            check_device("cuda")


def test_stream_updates():
    assert check_update(3.0, 1).shape == (1, 1)
    assert check_update([1.0, None], 1).shape == (1, 2)
    with pytest.raises(TypeError, match="non-numeric"):
        check_update("abc", 1)
    with pytest.raises(ValueError, match=r"\(2, n\)"):
        check_update([1.0, 2.0, 3.0], 2)


def test_as_float_array_keeps_shapes():
    assert as_float_array([[1, 2], [3, 4]]).shape == (2, 2)


# ------------------------------------------------------------------------------------------ timestamps
def test_numeric_timestamps_epoch_units_dates_and_steps():
    day = pd.Timestamp("2024-01-01")
    seconds = pd.Series([1704067200, 1704153600])
    assert parse_timestamps(seconds).iloc[0] == day
    assert parse_timestamps(seconds * 1000).iloc[0] == day
    assert parse_timestamps(seconds * 10**6).iloc[0] == day
    assert parse_timestamps(seconds * 10**9).iloc[0] == day
    assert parse_timestamps(seconds.astype(str)).iloc[0] == day  # numbers stored as text
    assert parse_timestamps(pd.Series([1704067200.5])).iloc[0] == day + pd.Timedelta("500ms")
    assert parse_timestamps(pd.Series([20240101, 20240102])).iloc[1] == pd.Timestamp("2024-01-02")
    steps = parse_timestamps(pd.Series([0, 1, 2]))
    assert steps.tolist() == [0, 1, 2] and not pd.api.types.is_datetime64_any_dtype(steps)
    assert parse_timestamps(pd.Series([1990, 1991])).tolist() == [1990, 1991]  # years stay years
    assert parse_timestamps(pd.Series([0.5, 1.5])).isna().all()  # fractional small numbers are not a time axis


def test_text_timestamps():
    stamps = parse_timestamps(pd.Series(["2024-03-31T01:00+01:00", "2024-03-31T03:00+02:00"]))  # DST change
    assert stamps.iloc[1] - stamps.iloc[0] == pd.Timedelta(hours=1)  # one hour apart, in UTC
    assert parse_timestamps(pd.Series(["2024-01-01", "31/01/2024"])).notna().all()
    assert parse_timestamps(pd.Series(["yesterday"])).isna().all()


def test_future_timestamps():
    assert list(future_timestamps(10, 5, 3)) == [15, 20, 25]
    assert future_timestamps(pd.Timestamp("2024-01-31"), pd.tseries.frequencies.to_offset("ME"), 2)[1] == \
        pd.Timestamp("2024-03-31")
    with pytest.raises(InputError, match="2262"):  # tables' timestamps are nanoseconds (pandas 3: not by default)
        future_timestamps(pd.Timestamp("2024-01-01").as_unit("ns"), pd.tseries.frequencies.to_offset("D"), 100_000)


def test_timestamps_parse_without_warnings_and_alike_on_every_pandas():
    """pandas 3 raised on offsets that change within a column (a crash deep in pandas where pandas 2 warned),
    warned on every frequency inference (infer_freq's return type) and on numbers among dates: with warnings as
    errors, dates with a DST change, numbers among dates, and a table with a gap validate the same as before."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stamps = parse_timestamps(pd.Series(["2024-10-27T01:00+02:00", "2024-10-27T02:00+02:00", "2024-10-27T02:00+01:00",
                                             "2024-10-27T03:00+01:00"]))  # the clocks go back: hourly in UTC
        assert str(stamps.dt.tz) == "UTC" and (stamps.diff().dropna() == pd.Timedelta(hours=1)).all()
        mixed = parse_timestamps(pd.Series(["2024-01-01", 5, "2024-01-03"], dtype=object))
        assert mixed.notna().tolist() == [True, False, True]
        hours = pd.date_range("2024-01-01", periods=30, freq="h").delete([7, 8])  # a gap: inferred across it
        table = validate_table(pd.DataFrame({"timestamp": hours, "target": np.arange(28.0)}), "t", "long", None,
                               "timestamp", "target")
        assert table.freqs[next(iter(table.freqs))] == pd.tseries.frequencies.to_offset("h") and len(table.frame) == 30
        weekly = pd.date_range("2024-01-07", periods=10, freq="W-SUN")
        assert infer_offset(weekly) == pd.tseries.frequencies.to_offset("W-SUN") and infer_offset(weekly[[0, 1, 3]]) is None


# ----------------------------------------------------------------------------------------------- tables
def days(n, start="2024-01-01", freq="D"):
    return pd.date_range(start, periods=n, freq=freq)


def test_layout_detection():
    wide = pd.DataFrame({"date": days(5), "a": np.arange(5.0), "b": np.arange(5.0)})
    assert to_long(wide)["item_id"].unique().tolist() == ["a", "b"]
    one = pd.DataFrame({"Date": days(5), "Value": np.arange(5.0)})  # any case; the series is named after its column
    assert to_long(one)["item_id"].unique().tolist() == ["Value"]
    long = pd.DataFrame({"series_id": [7] * 3 + [8] * 3, "ds": list(days(3)) * 2, "sales": np.arange(6.0)})
    out = to_long(long)  # the one remaining numeric column is the target; ids keep their values and order
    assert out["item_id"].unique().tolist() == [7, 8] and out["target"].tolist() == list(np.arange(6.0))
    ambiguous = pd.DataFrame({"date": days(5), "y": np.arange(5.0), "sales": np.arange(5.0)})
    with pytest.raises(InputError, match="--layout wide or --layout long"):
        to_long(ambiguous)
    assert set(to_long(ambiguous, layout="wide")["item_id"]) == {"y", "sales"}
    assert set(to_long(ambiguous, layout="long")["item_id"]) == {"y"}
    with pytest.raises(InputTypeError, match="looks like a long table"):
        to_long(long.rename(columns={"series_id": "item_id"}).astype({"item_id": str}), layout="wide")


def test_index_holds_the_timestamps():
    wide = pd.DataFrame({"a": np.arange(4.0), "b": np.arange(4.0)}, index=days(4))
    assert len(to_long(wide)) == 8
    multi = pd.DataFrame({"target": np.arange(6.0)},
                         index=pd.MultiIndex.from_product([["x", "y"], days(3)], names=["item_id", "timestamp"]))
    assert to_long(multi)["item_id"].unique().tolist() == ["x", "y"]


def test_ids_rows_and_duplicates():
    frame = pd.DataFrame({"item_id": ["a", None, "a", "a"], "timestamp": days(4), "target": np.arange(4.0)})
    with pytest.raises(InputError, match="without a series id"):
        to_long(frame)
    dup = pd.DataFrame({"store": ["s", "t"] * 3, "date": np.repeat(days(3), 2), "value": np.arange(6.0)})
    with pytest.raises(InputError, match="pass --id-column"):
        to_long(dup)
    assert to_long(dup, id_column="store")["item_id"].nunique() == 2


def test_gaps_become_missing_values_at_calendar_frequencies():
    months = days(12, "2023-01-31", "ME").delete([4, 5])  # two missing months: no pandas frequency infers
    table = validate_table(pd.DataFrame({"timestamp": months, "target": np.arange(10.0)}))
    assert len(table.frame) == 12 and table.frame["target"].isna().sum() == 2
    assert table.future(1)[0][0] == pd.Timestamp("2024-01-31")
    steps = to_long(pd.DataFrame({"t": [0, 2, 4, 8], "value": [1.0, 2.0, 3.0, 4.0]}), timestamp_column="t")
    assert steps["timestamp"].tolist() == [0, 2, 4, 6, 8] and np.isnan(steps["target"].iloc[3])
    irregular = pd.DataFrame({"timestamp": ["2024-01-01", "2024-01-02", "2024-01-04 05:00"], "target": [1.0, 2.0, 3.0]})
    with pytest.raises(InputError, match="irregular"):
        to_long(irregular)
    short = pd.DataFrame({"timestamp": days(2), "target": [1.0, 2.0]})
    with pytest.raises(InputError, match="at least 3"):
        to_long(short)
    assert validate_table(short, freq="D").future(1)[0][0] == pd.Timestamp("2024-01-03")
    with pytest.raises(InputError, match="not a pandas frequency"):
        to_long(short, freq="fortnightly")


def test_values():
    text = pd.DataFrame({"timestamp": days(3), "target": ["1", "2", "x"]})
    with pytest.raises(InputTypeError, match="non-numeric value 'x'"):
        to_long(text)
    with pytest.raises(TypeError, match="numbers stored as text"):
        to_long(text.assign(target=["1", "2", "3"]))
    with pytest.warns(UserWarning, match="inf"):
        out = to_long(pd.DataFrame({"timestamp": days(3), "target": [1.0, np.inf, 3.0]}))
    assert np.isnan(out["target"].iloc[1])
    with pytest.raises(InputError, match="not timestamps"):
        to_long(pd.DataFrame({"timestamp": ["2024-01-01", None, "2024-01-03"], "target": [1.0, 2.0, 3.0]}))


# ------------------------------------------------------------------------------------------------ files
def test_read_table_variants(tmp_path):
    frame = pd.DataFrame({"timestamp": days(4).strftime("%Y-%m-%d"), "target": [0.5, 1.5, 2.5, 3.5]})
    (tmp_path / "semi.csv").write_text(frame.to_csv(index=False, sep=";", decimal=","))
    assert read_table(tmp_path / "semi.csv")["target"].tolist() == [0.5, 1.5, 2.5, 3.5]
    (tmp_path / "t.tsv").write_text(frame.to_csv(index=False, sep="\t"))
    assert list(read_table(tmp_path / "t.tsv").columns) == ["timestamp", "target"]
    (tmp_path / "bom.csv").write_text("\ufefftimestamp, target\n2024-01-01, 1\n", encoding="utf-8")
    assert list(read_table(tmp_path / "bom.csv").columns) == ["timestamp", "target"]
    with gzip.open(tmp_path / "z.gz", "wt") as handle:
        handle.write(frame.to_csv(index=False))
    assert len(read_table(tmp_path / "z.gz")) == 4
    pd.DataFrame({"a": [1.0, 2.0, 3.0]}, index=pd.DatetimeIndex(days(3), name="when")).to_parquet(tmp_path / "i.parquet")
    assert to_long(read_table(tmp_path / "i.parquet"))["timestamp"].tolist() == list(days(3))  # the stored index
    (tmp_path / "latin.csv").write_bytes("timestamp,target\n2024-01-01,1\n\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="UTF-8"):
        read_table(tmp_path / "latin.csv")


def test_a_file_that_is_not_comma_separated_gets_a_hint(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one_column = pd.DataFrame({"timestamp|target": ["2024-01-01|1"]})
    with pytest.raises(InputError, match="separated by something other than commas"):
        to_long(one_column.rename(columns={"timestamp|target": "when;value"}))


# ------------------------------------------------------------------------------------------- model inputs
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_a_model_converted_from_float32_is_a_clear_error(dtype):
    """model.double() / .half() / .to(bfloat16) used to fail deep inside torch (a dtype mismatch in a matmul)."""
    model = tiny_model()
    series = torch.sin(torch.arange(100.0) / 5)
    expected = model.forecast(series, 12)
    model.to(dtype)
    tokens = torch.zeros(2, 3, 16)
    for call in (lambda: model.forecast(series, 12), lambda: model(tokens), lambda: model.stream(series)):
        with pytest.raises(ValueError, match=rf"float32, but parameter 'patch_embedding.hidden.weight' is {dtype}"):
            call()
    with torch.no_grad(), pytest.raises(ValueError, match="call model.float()"):
        model(tokens)
    with torch.enable_grad(), pytest.raises(ValueError, match="call model.float()"):
        model(tokens)
    model.float()  # back: forecasts again (converting float32 -> dtype -> float32 rounds the weights)
    assert model.forecast(series, 12)[0].shape == expected[0].shape


def test_forward_tokens_are_checked_and_other_real_dtypes_converted():
    model = tiny_model()
    tokens = torch.randn(3, 4, 16)
    tokens[..., 8:] = 1.0  # masks
    with torch.no_grad():
        expected = model(tokens)
        for dtype in (torch.float64, torch.float16, torch.int32):
            converted = tokens.to(dtype)
            assert torch.equal(model(converted), model(converted.float())), dtype
        assert torch.equal(model(tokens.double()), expected)
    bad = [
        ("not a tensor", TypeError, "must be a torch.Tensor"),
        (tokens.numpy(), TypeError, "must be a torch.Tensor"),
        (tokens.to(torch.complex64), TypeError, "real numbers"),
        (tokens > 0, TypeError, "real numbers"),
        (tokens[0], ValueError, r"shape \(batch >= 1, tokens >= 1, 16\).*got \(4, 16\)"),
        (tokens[..., :8], ValueError, r"got \(3, 4, 8\)"),
        (tokens[:, :0], ValueError, r"got \(3, 0, 16\)"),
        (tokens[:0], ValueError, r"got \(0, 4, 16\)"),
        (torch.empty(3, 4, 16, device="meta"), ValueError, "tokens are on meta but the model is on cpu"),
    ]
    for value, error, match in bad:
        for grad in (False, True):
            with torch.set_grad_enabled(grad), pytest.raises(error, match=match):
                model(value)
    for value in (float("nan"), float("inf"), -float("inf")):
        broken = tokens.clone()
        broken[1, 2, 3] = value
        with pytest.raises(ValueError, match="tokens hold NaN or inf"):
            model(broken)
    huge = torch.full((3, 4, 16), 3e38)  # finite, but its float32 sum overflows: the exact check decides
    assert check_tokens(huge, 8, torch.device("cpu")) is huge


def test_readme_bad_input_table_is_covered_by_tests():
    """Every row of README's "Bad input" table names tests that exist; the table has at least 40 rows."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    section = readme[readme.index("### Bad input"):readme.index("## Fine-tuning on your own data")]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| **")][2:]
    assert len(rows) >= 40
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        refs = [r.strip(" `") for r in cells[-1].split(",")]
        assert refs and all("::" in r for r in refs), row
        for ref in refs:
            module, name = ref.split("::")
            source = (root / "tests" / f"{module}.py").read_text()
            assert f"def {name}(" in source, f"{ref} (README row: {cells[0]})"


def test_read_only_arrays_are_copied_not_shared_with_torch():
    """pandas 3 hands out read-only arrays (copy-on-write: Series.to_numpy()), as does a memory-mapped file:
    torch warned that writing to such a tensor is undefined (once per process, hence a fresh one, warnings as
    errors). The series is copied; a writable one is still not copied."""
    import subprocess
    import sys

    code = ("import numpy as np\nfrom tirex.validation import to_series_list\n"
            "a = np.arange(5.0); a.setflags(write=False)\nt = to_series_list([a])[0]\n"
            "assert t.tolist() == a.tolist() and not np.shares_memory(t.numpy(), a)\n"
            "b = np.arange(5.0)\nassert np.shares_memory(to_series_list([b])[0].numpy(), b)\nprint('ok')\n")
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "ok", proc.stderr[-1500:]
