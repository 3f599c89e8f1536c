"""Tables: CSV / Parquet files and pandas DataFrames, long or wide -> one validated long frame.

The table half of the validation layer (``tirex.validation`` has the array half). The command line,
``TiRexModel.forecast`` / ``finetune`` on DataFrames and the server and batch paths all call
``to_long`` (or ``validate_table``, which also returns each series' frequency), so a table means the
same thing and fails the same way everywhere.

- ``read_table(path)``: CSV (delimiter and decimal mark detected: ``,`` ``;`` tab ``|``), TSV, gzip
  CSV or Parquet -> DataFrame.
- ``to_long(df, ...)`` / ``validate_table(df, ...)``: columns detected (or given), layout detected (or
  given), ids, timestamps and values checked, each series put on its regular time grid (gaps -> NaN).
- ``parse_timestamps(values)``: dates, epoch seconds / ms / us / ns, YYYYMMDD numbers, or integer steps.
- ``future_timestamps(last, freq, horizon)``: the forecast's timestamps, with a clear error past 2262.
  (Both live in ``tirex.timestamps``, with the regular grids.)

Errors are ``InputError`` (a ``ValueError``) or ``InputTypeError`` (also a ``TypeError``) that name the
file or frame, the column and the fix.
"""

from __future__ import annotations

import csv
import gzip
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset

from .timestamps import datetime_grid, future_timestamps, integer_grid, parse_timestamps
from .validation import InputError, InputTypeError, option_hint as _option, show_value as _show

ID_CANDIDATES = ("item_id", "id", "unique_id", "series_id")
TIME_CANDIDATES = ("timestamp", "ds", "date", "time", "datetime", "ts")
TARGET_CANDIDATES = ("target", "y", "value")
LAYOUTS = ("auto", "long", "wide")
_CSV_SUFFIXES = (".csv", ".txt", ".tsv", ".gz")
_PARQUET_SUFFIXES = (".parquet", ".pq")
__all__ = ["ID_CANDIDATES", "TIME_CANDIDATES", "TARGET_CANDIDATES", "InputError", "InputTypeError", "LongTable",
           "atomic_write", "future_timestamps", "parse_timestamps", "read_table", "to_long", "validate_table"]


# ------------------------------------------------------------------------------------------------- files
def _sniff(path: Path) -> dict[str, str]:
    """Delimiter and decimal mark of a CSV from its first 64 kB (``;`` files often use a decimal comma)."""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rt", encoding="utf-8-sig", errors="replace") as handle:
        sample = handle.read(65536)
    if path.suffix.lower() == ".tsv":
        sep = "\t"
    else:
        try:
            sep = csv.Sniffer().sniff(sample.split("\n", 1)[0], delimiters=",;\t|").delimiter
        except csv.Error:
            sep = ","
    decimal = "," if sep in ";\t|" and re.search(r"\d,\d", sample) else "."
    return {"sep": sep, "decimal": decimal}


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV (``.csv``, ``.txt``, ``.tsv``, ``.gz``) or Parquet (``.parquet``, ``.pq``) file.

    The CSV delimiter (``,`` ``;`` tab ``|``) and a decimal comma in ``;``-separated files are
    detected; a UTF-8 byte-order mark and spaces around column names are dropped. A Parquet file's
    stored index (e.g. a DatetimeIndex) is kept as the index (``to_long`` reads it). Raises ``InputError``
    naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a .csv or .parquet file")
    suffix = path.suffix.lower()
    if suffix not in _CSV_SUFFIXES + _PARQUET_SUFFIXES:
        raise InputError(f"{path}: unknown file type {suffix!r}; use .csv, .tsv or .parquet")
    try:
        if suffix in _PARQUET_SUFFIXES:
            df = pd.read_parquet(path)  # a stored DatetimeIndex stays the index: validate_table reads it
        else:
            df = pd.read_csv(path, encoding="utf-8-sig", skipinitialspace=True, **_sniff(path))
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: the file is empty") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: is not UTF-8 text ({exc.reason}); save it as UTF-8 CSV") from exc
    except Exception as exc:  # parser errors of all kinds
        raise InputError(f"{path}: cannot be read as {'parquet' if suffix in _PARQUET_SUFFIXES else 'csv'} ({exc})") from exc
    if df.empty:
        raise InputError(f"{path}: the file has no data rows")
    return df.rename(columns=lambda c: c.strip() if isinstance(c, str) else c)


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically: a failure never leaves a partial
    file. The file gets the usual permissions (0666 minus the umask), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


# ---------------------------------------------------------------------------------------------- columns
def _find(columns: list, given: str | None, candidates: tuple[str, ...], what: str, label: str) -> Any:
    if given is not None:
        if given not in columns:
            raise InputError(f"{label}: no column {given!r} ({what}); columns are {columns}")
        return given
    lowered = {c.lower(): c for c in reversed(columns) if isinstance(c, str)}
    return next((lowered[c] for c in candidates if c in lowered), None)


def _numeric_like(column: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
        return True
    if column.dtype == object:
        values = column.dropna()
        return len(values) > 0 and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values)
    return False


def _values(column: pd.Series, label: str, name: Any) -> np.ndarray:
    """A value column as float64 (NaN = missing); text is an ``InputTypeError`` naming an example."""
    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    elif column.dtype == object or isinstance(column.dtype, (pd.CategoricalDtype, pd.StringDtype)):
        column = column.astype(object)
        text = column.map(lambda v: isinstance(v, (str, bytes)))
        if text.any():
            parsed = pd.to_numeric(column[text], errors="coerce")
            bad = column[text][parsed.isna()]
            if len(bad):
                example = bad.iloc[0]
                hint = " (a decimal comma? the file's delimiter?)" if re.fullmatch(r"-?\d+,\d+", str(example)) else ""
                raise InputTypeError(
                    f"{label}: column {name!r} is not numeric: it has a non-numeric value {example!r}{hint}; use numbers, "
                    "and leave missing values empty"
                )
            raise InputTypeError(
                f"{label}: column {name!r} is not numeric: it holds numbers stored as text (e.g. {column[text].iloc[0]!r}); "
                "convert it first (pd.to_numeric)"
            )
        others = column[~column.map(lambda v: v is None or v is pd.NA or isinstance(v, (int, float, np.number)))]
        if len(others):
            raise InputTypeError(f"{label}: column {name!r} is not numeric: it holds {type(others.iloc[0]).__name__} values")
        values = np.array([np.nan if v is None or v is pd.NA else float(v) for v in column], dtype=np.float64)
    else:
        raise InputTypeError(f"{label}: column {name!r} is not numeric (dtype {column.dtype})")
    inf = np.isinf(values)
    if inf.any():
        warnings.warn(f"{label}: column {name!r} has {int(inf.sum())} inf value(s); treating them as missing",
                      UserWarning, stacklevel=4)
        values = np.where(inf, np.nan, values)
    return values


# ------------------------------------------------------------------------------------------------ tables
@dataclass
class LongTable:
    """A validated table: ``frame`` has columns ``item_id``, ``timestamp``, ``target``, each series
    contiguous, sorted and on its regular grid; ``freqs`` maps each id to its frequency (a pandas offset
    or Timedelta, or an int step); the ``*_column`` fields are the user's column names."""

    frame: pd.DataFrame
    freqs: dict = field(repr=False)
    id_column: Any
    timestamp_column: Any
    target_column: Any
    label: str = "DataFrame"

    def future(self, horizon: int) -> list[pd.Index]:
        """The forecast timestamps of every series, in the order of ``frame``'s ids."""
        last = self.frame.groupby("item_id", sort=False)["timestamp"].last()
        return [future_timestamps(stamp, self.freqs[item], horizon, f"{self.label}: series {_show(item)}")
                for item, stamp in last.items()]


def _with_time_column(df: pd.DataFrame) -> tuple[pd.DataFrame, Any]:
    """Index levels that hold data become columns: a DatetimeIndex / PeriodIndex, a MultiIndex (id, time), or
    an index named like an id or time column. Returns the frame and the name of a time column that came from
    a DatetimeIndex / PeriodIndex (a timestamp column whatever its name), or None."""
    named = isinstance(df.index.name, str) and df.index.name.lower() in ID_CANDIDATES + TIME_CANDIDATES
    if not (isinstance(df.index, (pd.DatetimeIndex, pd.PeriodIndex, pd.MultiIndex)) or named):
        return df, None
    time_index = isinstance(df.index, (pd.DatetimeIndex, pd.PeriodIndex))
    names = [n if n is not None else ("timestamp" if time_index else f"level_{i}") for i, n in enumerate(df.index.names)]
    return df.rename_axis(names).reset_index(), names[0] if time_index else None


def _layout(df, label, layout, ts, idc, tgt, target_given) -> str:
    if layout not in LAYOUTS:
        raise InputError(f"layout must be 'auto', 'long' or 'wide', got {layout!r}")
    if layout != "auto":
        return layout
    if idc is not None or target_given:
        return "long"
    others = [c for c in df.columns if c not in (ts, tgt) and _numeric_like(df[c])]
    if tgt is not None and not others:
        return "long"
    if tgt is None:
        return "wide"
    raise InputError(
        f"{label}: cannot tell the layout: column {tgt!r} could be the one target (long layout, ignoring {others}) "
        f"or one of {len(others) + 1} series (wide layout); pass --layout wide or --layout long (layout= in Python)"
    )


def _long_parts(df, label, layout, ts, idc, tgt):
    """(ids, timestamps, values, target name) of a long or wide table, not yet checked."""
    if layout == "long":
        if tgt is None:
            rest = [c for c in df.columns if c not in (ts, idc)]
            if len(rest) == 1 and _numeric_like(df[rest[0]]):
                tgt = rest[0]
            else:
                raise InputError(f"{label}: no target column (looked for {list(TARGET_CANDIDATES)}); pass {_option('target_column')}")
        if idc is None:
            ids = pd.Series(tgt, index=df.index, dtype=object)
        else:
            ids = df[idc]
            missing = ids.isna().to_numpy()
            if missing.any():
                first = int(np.flatnonzero(missing)[0])
                raise InputError(f"{label}: column {idc!r} has {int(missing.sum())} row(s) without a series id (the "
                                 f"first is data row {first + 1}); fill in the ids or drop those rows")
        return ids, df[ts], _values(df[tgt], label, tgt), tgt
    value_cols = [c for c in df.columns if c != ts]
    if not value_cols:
        raise InputError(f"{label}: a wide table needs one column per series next to {ts!r}")
    for c in value_cols:
        if not _numeric_like(df[c]) and not df[c].isna().all():
            looks_long = c in (idc,) or (isinstance(c, str) and c.lower() in ID_CANDIDATES)
            hint = "; this looks like a long table (one row per id and timestamp): drop --layout wide" if looks_long else ""
            raise InputTypeError(f"{label}: the wide layout needs one numeric column per series, but column {c!r} is "
                                 f"not numeric (e.g. {df[c].dropna().iloc[0]!r}){hint}")
    n = len(df)
    ids = pd.Series(np.repeat(np.asarray(value_cols, dtype=object), n))
    stamps = pd.Series(np.tile(df[ts].to_numpy(), len(value_cols)), dtype=df[ts].dtype)
    values = np.concatenate([_values(df[c], label, c) for c in value_cols])
    return ids, stamps, values, None


def validate_table(
    df: pd.DataFrame,
    path: str | Path = "DataFrame",
    layout: str = "auto",
    id_column: Any = None,
    timestamp_column: Any = None,
    target_column: Any = None,
    freq: Any = None,
) -> LongTable:
    """Validate a long or wide table of series; see ``to_long``. Returns a ``LongTable`` (frame + frequencies)."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    label = str(path)
    df, index_time = _with_time_column(df)
    if df.empty:
        raise InputError(f"{label}: the table has no rows")
    cols = list(df.columns)
    ts = _find(cols, timestamp_column, TIME_CANDIDATES, "timestamp", label)
    ts = index_time if ts is None else ts
    if ts is None:
        hint = ""
        if len(cols) == 1 and isinstance(cols[0], str) and re.search(r"[;\t|]", cols[0]):
            hint = f" (the only column is {cols[0]!r}: is the file separated by something other than commas?)"
        raise InputError(f"{label}: no timestamp column (looked for {list(TIME_CANDIDATES)}, any case){hint}; "
                         f"pass {_option('timestamp_column')}")
    idc = _find(cols, id_column, ID_CANDIDATES, "id", label)
    tgt = _find(cols, target_column, TARGET_CANDIDATES, "target", label)
    layout = _layout(df, label, layout, ts, idc, tgt, target_column is not None)
    ids, raw_stamps, values, tgt = _long_parts(df, label, layout, ts, idc, tgt)
    if freq is not None and not isinstance(freq, (int, np.integer)):
        try:
            freq = to_offset(freq)
        except (ValueError, TypeError) as exc:
            raise InputError(f"freq {freq!r} is not a pandas frequency such as 'D', 'h', '15min' or 'MS'") from exc
    frame, freqs = _regular_series(ids, raw_stamps.reset_index(drop=True), values, label, ts, freq,
                                   hint_columns=[c for c in cols if c not in (ts, idc, tgt)] if idc is None else [])
    return LongTable(frame, freqs, idc, ts, tgt, label)


def _parse_column(raw: pd.Series, label, ts_name) -> pd.Series:
    stamps = parse_timestamps(raw)
    bad = stamps.isna().to_numpy()
    if bad.any():
        example = raw[bad].iloc[0]
        raise InputError(f"{label}: column {ts_name!r} has {int(bad.sum())} value(s) that are not timestamps, e.g. "
                         f"{_show(example)} is not a timestamp; use ISO dates like 2024-01-31, epoch seconds or integer "
                         "steps (one kind per column)")
    if pd.api.types.is_datetime64_any_dtype(stamps):
        try:
            stamps = stamps.dt.as_unit("ns")
        except (ValueError, pd.errors.OutOfBoundsDatetime):
            raise InputError(f"{label}: column {ts_name!r} has dates outside 1677-2262, the range pandas supports") from None
    return stamps


def _regular_series(ids, raw_stamps, values, label, ts_name, freq, hint_columns):
    # without an id column, several series stacked in one table look like one series with duplicate or
    # irregular timestamps: name the column that may hold the ids
    hint = f" (if column {hint_columns[0]!r} names the series, pass {_option('id_column')})" if hint_columns else ""
    stamps = _parse_column(raw_stamps, label, ts_name)
    datetime_axis = pd.api.types.is_datetime64_any_dtype(stamps)
    keys = pd.DatetimeIndex(stamps).asi8 if datetime_axis else stamps.to_numpy(dtype=np.int64)
    codes, uniques = pd.factorize(ids.reset_index(drop=True), sort=False)
    order = np.lexsort((keys, codes))  # by series (first appearance), then time
    codes, keys, values = codes[order], keys[order], values[order]
    same = (np.diff(codes) == 0) & (np.diff(keys) == 0)
    if same.any():
        at = int(np.flatnonzero(same)[0])
        stamp = pd.Timestamp(keys[at]) if datetime_axis else keys[at]
        raise InputError(f"{label}: duplicate timestamp {stamp} in series {_show(uniques[codes[at]])} (column "
                         f"{ts_name!r}); aggregate or drop duplicates{hint}")
    bounds = np.flatnonzero(np.diff(codes)) + 1
    tz = stamps.dt.tz if datetime_axis else None
    parts, freqs = [], {}
    for code, key_part, value_part in zip(codes[np.r_[0, bounds]], np.split(keys, bounds), np.split(values, bounds)):
        name = uniques[code]
        if datetime_axis:
            index = pd.DatetimeIndex(key_part.astype("datetime64[ns]")).tz_localize("UTC").tz_convert(tz) if tz else \
                pd.DatetimeIndex(key_part.astype("datetime64[ns]"))
            grid, freqs[name] = datetime_grid(index, freq, name, label, ts_name, hint)
            positions = grid.get_indexer(index)
        else:
            grid, freqs[name] = integer_grid(key_part, freq, name, label, ts_name, hint)
            positions = ((key_part - grid[0]) // freqs[name]).astype(np.int64)
        target = np.full(len(grid), np.nan)
        target[positions] = value_part
        parts.append(pd.DataFrame({"item_id": pd.Series([name] * len(grid), dtype=object), "timestamp": grid,
                                   "target": target}))
    return pd.concat(parts, ignore_index=True), freqs


def to_long(
    df: pd.DataFrame,
    path: str | Path = "DataFrame",
    layout: str = "auto",
    id_column: Any = None,
    timestamp_column: Any = None,
    target_column: Any = None,
    freq: Any = None,
) -> pd.DataFrame:
    """A validated long frame with columns ``item_id``, ``timestamp``, ``target`` on a regular grid.

    Long layout: one row per (id, timestamp) with a target column. Wide layout: a timestamp column
    and one numeric column per series. Column names are detected (any case: ``item_id`` / ``id`` /
    ``unique_id`` / ``series_id``, ``timestamp`` / ``ds`` / ``date`` / ``time`` / ``datetime``,
    ``target`` / ``y`` / ``value``) or given. Layout "auto": long when there is an id column (or a
    target column is given), or when the only value column is a target; wide when no column is named
    like a target; a target-named column next to other numeric columns without an id is ambiguous
    (error: pass the layout). A DatetimeIndex (or an (id, time) MultiIndex) counts as columns.

    Per series: timestamps are parsed (``parse_timestamps``), duplicates and rows without an id are
    errors, and the series is put on its regular grid (frequency inferred, also across gaps, or
    ``freq``); gaps become NaN rows. Ids keep their values and the order of first appearance.

    Example:
        >>> to_long(pd.DataFrame({"date": ["2024-01-01", "2024-01-02", "2024-01-04"], "a": [1, 2, 4], "b": [0, 0, 1]}))
        ... # 8 rows: series "a" and "b", each with 2024-01-03 as NaN
    """
    return validate_table(df, path, layout, id_column, timestamp_column, target_column, freq).frame
