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

from .validation import InputError, InputTypeError

ID_CANDIDATES = ("item_id", "id", "unique_id", "series_id")
TIME_CANDIDATES = ("timestamp", "ds", "date", "time", "datetime")
TARGET_CANDIDATES = ("target", "y", "value")
LAYOUTS = ("auto", "long", "wide")
_CSV_SUFFIXES = (".csv", ".txt", ".tsv", ".gz")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_EPOCH_MIN = 1e8  # numeric timestamps from here up are epoch times (1973 in seconds); below, integer steps
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
    stored index (e.g. a DatetimeIndex) becomes a column. Raises ``InputError`` naming the file.
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
            df = pd.read_parquet(path)
            if not isinstance(df.index, pd.RangeIndex):
                df = df.reset_index()
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
def _show(value: Any) -> str:
    """repr of a value for a message, numpy scalars as plain Python values (5, not np.int64(5))."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _option(name: str) -> str:
    return f"--{name.replace('_', '-')} (or {name}= in Python)"


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


# ------------------------------------------------------------------------------------------- timestamps
def _numeric_timestamps(values: pd.Series) -> pd.Series:
    numbers = values.astype(np.float64)
    finite = np.isfinite(numbers)
    if not finite.any():
        return pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    integral = bool(np.all(np.mod(numbers[finite], 1) == 0))
    peak = float(np.abs(numbers[finite]).max())
    if integral and 19000101 <= numbers[finite].min() and peak <= 21001231:  # YYYYMMDD
        stamps = pd.to_datetime(numbers.astype("Int64").astype(str), format="%Y%m%d", errors="coerce")
        if stamps[finite].notna().all():
            return stamps.where(finite)
    if peak >= _EPOCH_MIN:  # epoch time; the unit from the magnitude (seconds up to year 5138)
        unit = "s" if peak < 1e11 else "ms" if peak < 1e14 else "us" if peak < 1e17 else "ns"
        return pd.to_datetime(numbers.where(finite), unit=unit, errors="coerce")
    if integral:  # small integers: steps of an integer time axis (0, 1, 2, ... or years like 1990)
        return numbers.where(finite).astype("Int64")
    return pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")


def parse_timestamps(values: pd.Series) -> pd.Series:
    """Timestamps of a column: datetime64 (ns) for dates, Int64 for an integer time axis, NaT where unparseable.

    Dates as text are parsed as ISO 8601 first, then element by element; offsets that differ within a
    column (daylight saving) are converted to UTC. Numbers: YYYYMMDD (20240131) are dates; values from
    1e8 up are epoch times, the unit chosen by magnitude (seconds below 1e11, then ms, us, ns); smaller
    integers (0, 1, 2 ... or years like 1990) are steps of an integer time axis. Periods become their
    start times.
    """
    values = pd.Series(values)
    if isinstance(values.dtype, pd.PeriodDtype):
        values = values.dt.to_timestamp()
    if pd.api.types.is_datetime64_any_dtype(values):
        return values
    if pd.api.types.is_bool_dtype(values):
        return pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    if pd.api.types.is_numeric_dtype(values):
        return _numeric_timestamps(values)
    as_numbers = pd.to_numeric(values, errors="coerce")
    if values.notna().any() and as_numbers[values.notna()].notna().all():  # numbers stored as text
        return _numeric_timestamps(as_numbers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "could not infer format" for the element-wise retry
        warnings.simplefilter("ignore", FutureWarning)  # mixed offsets: handled right below (utc=True)
        stamps = pd.to_datetime(values, format="ISO8601", errors="coerce")
        if not pd.api.types.is_datetime64_any_dtype(stamps):  # mixed offsets
            stamps = pd.to_datetime(values, format="ISO8601", errors="coerce", utc=True)
        failed = stamps.isna() & values.notna()
        if failed.any():
            retry = pd.to_datetime(values[failed], format="mixed", errors="coerce", utc=stamps.dt.tz is not None)
            stamps = stamps.where(~failed, retry) if pd.api.types.is_datetime64_any_dtype(retry) else stamps
    # numbers among dates have no unit pandas could know (it would read them as nanoseconds): not timestamps
    numbers = values.map(lambda v: isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)))
    return stamps.mask(numbers.to_numpy()) if numbers.any() else stamps


def future_timestamps(last: Any, freq: Any, horizon: int, what: str = "series") -> pd.Index:
    """The ``horizon`` timestamps after ``last`` at ``freq`` (a pandas offset / Timedelta, or an int step).

    Raises ``InputError`` when they run past what pandas can represent (2262-04-11), instead of
    pandas' "Cannot generate range" deep inside ``date_range``.
    """
    if isinstance(freq, (int, np.integer)):
        end = int(last) + int(freq) * horizon
        if abs(end) >= 2**63:
            raise InputError(f"{what}: {horizon:,} steps of {freq} after {last} overflow a 64-bit integer time axis")
        return pd.Index(int(last) + int(freq) * np.arange(1, horizon + 1, dtype=np.int64))
    try:
        return pd.date_range(last, periods=horizon + 1, freq=freq)[1:]
    except (ValueError, OverflowError, pd.errors.OutOfBoundsDatetime):
        step = getattr(freq, "freqstr", str(freq))
        raise InputError(
            f"{what}: a horizon of {horizon:,} steps of {step} after {last} runs past {pd.Timestamp.max:%Y-%m-%d}, the "
            "last date pandas can represent; forecast fewer steps (or resample to a coarser frequency)"
        ) from None


# ------------------------------------------------------------------------------------------------- grids
def _candidate_offsets(index: pd.DatetimeIndex) -> list:
    """Frequencies to try for a series with gaps: those of a few runs of three consecutive timestamps."""
    found = []
    for start in sorted({0, len(index) // 3, len(index) // 2, 2 * len(index) // 3, len(index) - 3}):
        if 0 <= start <= len(index) - 3:
            freq = pd.infer_freq(index[start:start + 3])
            if freq is not None and freq not in found:
                found.append(freq)
    steps = np.diff(index.asi8)
    if len(steps) and steps.min() > 0:
        found.append(pd.Timedelta(int(steps.min()), "ns"))
    return found


def _on_grid(index: pd.DatetimeIndex, freq) -> pd.DatetimeIndex | None:
    """The regular grid at ``freq`` from the first to the last timestamp if every timestamp lies on it; None if
    not, or if the grid would be mostly gaps (over 100 slots per timestamp)."""
    try:
        step = pd.date_range(index[0], periods=2, freq=freq)
        if (step[1] - step[0]).value * (100 * len(index) + 10_000) < (index[-1] - index[0]).value:  # Python ints
            return None
        grid = pd.date_range(index[0], index[-1], freq=freq)
    except (ValueError, OverflowError):
        return None
    if grid[-1] != index[-1] or not index.isin(grid).all():
        return None
    return grid


def _datetime_grid(index: pd.DatetimeIndex, freq, name, label, ts_name, hint=""):
    """(grid, frequency) for one series' sorted timestamps; gaps are allowed, irregular spacing is not."""
    if freq is not None:
        grid = _on_grid(index, freq) if len(index) > 1 else index
        if grid is None:
            raise InputError(f"{label}: series {_show(name)} has timestamps in column {ts_name!r} that are not on a "
                             f"{getattr(freq, 'freqstr', freq)} grid; check the frequency you passed")
        return grid, freq
    if len(index) < 3:
        raise InputError(f"{label}: series {_show(name)} has {len(index)} timestamp(s); at least 3 are needed to infer its "
                         f"frequency (or pass the frequency: {_option('freq')})")
    inferred = pd.infer_freq(index)
    if inferred is not None:
        return index, to_offset(inferred)
    for candidate in _candidate_offsets(index):
        grid = _on_grid(index, candidate)
        if grid is not None:
            return grid, to_offset(candidate) if isinstance(candidate, str) else candidate
    raise InputError(f"{label}: series {_show(name)} has irregular timestamps in column {ts_name!r}; resample it to a "
                     f"regular frequency (or pass the frequency: {_option('freq')}){hint}")


def _integer_grid(steps: np.ndarray, freq, name, label, ts_name, hint=""):
    if freq is not None and not isinstance(freq, (int, np.integer)):
        raise InputError(f"{label}: column {ts_name!r} holds integer steps, so the frequency must be an integer step, got {freq!r}")
    diffs = np.diff(steps)
    step = int(freq) if freq is not None else (int(diffs.min()) if len(diffs) else 1)
    if step <= 0 or np.any(diffs % step):
        raise InputError(f"{label}: series {_show(name)} has irregular integer steps in column {ts_name!r}; "
                         f"resample it to a regular step{hint}")
    return np.arange(steps[0], steps[-1] + step, step, dtype=np.int64), step


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


def _with_time_column(df: pd.DataFrame) -> pd.DataFrame:
    # a DatetimeIndex / PeriodIndex / MultiIndex (id, time) holds data: make it columns
    if isinstance(df.index, (pd.DatetimeIndex, pd.PeriodIndex, pd.MultiIndex)) or df.index.name is not None:
        index_names = [n if n is not None else ("timestamp" if isinstance(df.index, (pd.DatetimeIndex, pd.PeriodIndex))
                                                  else f"level_{i}") for i, n in enumerate(df.index.names)]
        return df.rename_axis(index_names).reset_index()
    return df


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
    df = _with_time_column(df)
    if df.empty:
        raise InputError(f"{label}: the table has no rows")
    cols = list(df.columns)
    ts = _find(cols, timestamp_column, TIME_CANDIDATES, "timestamp", label)
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
            grid, freqs[name] = _datetime_grid(index, freq, name, label, ts_name, hint)
            positions = grid.get_indexer(index)
        else:
            grid, freqs[name] = _integer_grid(key_part, freq, name, label, ts_name, hint)
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
