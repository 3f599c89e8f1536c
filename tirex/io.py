"""Reading user tables (CSV / Parquet, long or wide) into a validated long DataFrame."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ID_CANDIDATES = ("item_id", "id", "unique_id", "series_id")
TIME_CANDIDATES = ("timestamp", "ds", "date", "time", "datetime")
TARGET_CANDIDATES = ("target", "y", "value")


class InputError(ValueError):
    """A problem with a user's data file, phrased so a shell user can fix it."""


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a .csv or .parquet file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        elif suffix in (".csv", ".txt", ".gz"):
            df = pd.read_csv(path)
        else:
            raise InputError(f"{path}: unknown file type {suffix!r}; use .csv or .parquet")
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: the file is empty") from None
    except InputError:
        raise
    except Exception as exc:  # parser errors of all kinds
        raise InputError(f"{path}: cannot be read as {suffix.lstrip('.')} ({exc})") from exc
    if df.empty:
        raise InputError(f"{path}: the file has no data rows")
    return df


def _find(columns, given, candidates, what, path) -> str | None:
    if given is not None:
        if given not in columns:
            raise InputError(f"{path}: no column {given!r} ({what}); columns are {list(columns)}")
        return given
    return next((c for c in candidates if c in columns), None)


def to_long(
    df: pd.DataFrame,
    path: str | Path = "<table>",
    layout: str = "auto",
    id_column: str | None = None,
    timestamp_column: str | None = None,
    target_column: str | None = None,
) -> pd.DataFrame:
    """A validated long frame with columns ``item_id``, ``timestamp``, ``target`` on a regular grid.

    Long layout: one row per (id, timestamp) with a target column. Wide layout: a timestamp column
    and one numeric column per series. Gaps in an otherwise regular series become NaN rows.
    """
    cols = list(df.columns)
    ts = _find(cols, timestamp_column, TIME_CANDIDATES, "timestamp", path)
    if ts is None:
        raise InputError(f"{path}: no timestamp column (looked for {list(TIME_CANDIDATES)}); pass --timestamp-column")
    idc = _find(cols, id_column, ID_CANDIDATES, "id", path)
    tgt = _find(cols, target_column, TARGET_CANDIDATES, "target", path)
    if layout == "auto":
        layout = "long" if tgt is not None else "wide"
    if layout == "long":
        if tgt is None:
            raise InputError(f"{path}: no target column (looked for {list(TARGET_CANDIDATES)}); pass --target-column")
        long = pd.DataFrame({
            "item_id": df[idc].astype(str) if idc is not None else "series",
            "timestamp": df[ts],
            "target": df[tgt],
        })
    elif layout == "wide":
        value_cols = [c for c in cols if c != ts]
        if not value_cols:
            raise InputError(f"{path}: a wide table needs one column per series next to {ts!r}")
        long = df.melt(id_vars=[ts], value_vars=value_cols, var_name="item_id", value_name="target")
        long = long.rename(columns={ts: "timestamp"})[["item_id", "timestamp", "target"]]
        long["item_id"] = long["item_id"].astype(str)
    else:
        raise InputError(f"layout must be 'auto', 'long' or 'wide', got {layout!r}")
    return _validate(long, path, ts, tgt or "value columns")


def parse_timestamps(values: pd.Series) -> pd.Series:
    """Parse timestamps (ISO 8601 first, then per-element inference); unparseable values become NaT."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return values
    stamps = pd.to_datetime(values, format="ISO8601", errors="coerce")
    failed = stamps.isna() & values.notna()
    if failed.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            stamps[failed] = pd.to_datetime(values[failed], format="mixed", errors="coerce")
    return stamps


def _validate(long: pd.DataFrame, path, ts_name: str, target_name: str) -> pd.DataFrame:
    stamps = parse_timestamps(long["timestamp"])
    bad = stamps.isna() & long["timestamp"].notna()
    if bad.any() or stamps.isna().any():
        example = long["timestamp"][bad | stamps.isna()].iloc[0]
        raise InputError(f"{path}: column {ts_name!r} has a value that is not a timestamp ({example!r}); use ISO dates like 2024-01-31")
    target = pd.to_numeric(long["target"], errors="coerce")
    bad = target.isna() & long["target"].notna() & (long["target"].astype(str).str.strip().str.lower() != "nan")
    if bad.any():
        example = long["target"][bad].iloc[0]
        raise InputError(
            f"{path}: column {target_name!r} has a non-numeric value ({example!r}); use numbers, and leave missing values empty"
        )
    long = long.assign(timestamp=stamps, target=target.astype(float)).sort_values(["item_id", "timestamp"], kind="stable")
    dup = long.duplicated(["item_id", "timestamp"])
    if dup.any():
        row = long[dup].iloc[0]
        raise InputError(
            f"{path}: duplicate timestamp {row.timestamp} in series {row.item_id!r} (column {ts_name!r}); aggregate or drop duplicates"
        )
    return pd.concat([_regularise(g, path, ts_name) for _, g in long.groupby("item_id", sort=False)], ignore_index=True)


def _regularise(group: pd.DataFrame, path, ts_name: str) -> pd.DataFrame:
    """Put one series on its regular grid; gaps become NaN, irregular spacing is an error."""
    index = pd.DatetimeIndex(group["timestamp"])
    name = group["item_id"].iloc[0]
    if len(index) < 3:
        raise InputError(f"{path}: series {name!r} has {len(index)} timestamps; at least 3 are needed to infer its frequency")
    freq = pd.infer_freq(index)
    if freq is None:
        steps = np.diff(index.asi8)
        step = steps.min()
        if step <= 0 or np.any(steps % step):
            raise InputError(
                f"{path}: series {name!r} has irregular timestamps in column {ts_name!r}; resample it to a regular frequency"
            )
        freq = pd.Timedelta(step)
        grid = pd.date_range(index[0], index[-1], freq=freq)
        group = group.set_index("timestamp").reindex(grid).rename_axis("timestamp").reset_index()
        group["item_id"] = name
    return group[["item_id", "timestamp", "target"]]
