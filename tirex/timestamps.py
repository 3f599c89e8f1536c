"""Timestamps of tables: parsing (dates, epoch times, integer steps), regular grids across gaps, future timestamps.

Part of the table validation in ``tirex.io``; ``parse_timestamps`` and ``future_timestamps`` are also exported there.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset

from .validation import InputError, option_hint as _option, show_value as _show

_EPOCH_MIN = 1e8  # numeric timestamps from here up are epoch times (1973 in seconds); below, integer steps


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
    # numbers among dates have no unit pandas could know (it would read them as nanoseconds): not timestamps
    numbers = values.map(lambda v: isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)))
    text = values.mask(numbers.to_numpy()) if numbers.any() else values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "could not infer format" for the element-wise retry
        warnings.simplefilter("ignore", FutureWarning)  # mixed offsets (pandas 2): handled right below (utc=True)
        try:
            stamps = pd.to_datetime(text, format="ISO8601", errors="coerce")
        except ValueError:  # mixed offsets (pandas 3 raises: "Mixed timezones detected")
            stamps = None
        if stamps is None or not pd.api.types.is_datetime64_any_dtype(stamps):  # mixed offsets: to UTC
            stamps = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
        failed = stamps.isna() & text.notna()
        if failed.any():
            try:
                retry = pd.to_datetime(text[failed], format="mixed", errors="coerce", utc=stamps.dt.tz is not None)
            except ValueError:  # naive and offset dates mixed (pandas 3 raises): those stay unparsed
                retry = None
            if retry is not None and pd.api.types.is_datetime64_any_dtype(retry):
                stamps = stamps.where(~failed, retry)
    return stamps


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
def infer_offset(index: pd.DatetimeIndex):
    """``pd.infer_freq`` as an offset (None where there is no regular frequency). pandas 3.1 warns that it
    will return an offset instead of a string; either converts to the same offset."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="A future version of pandas will return a BaseOffset")
        freq = pd.infer_freq(index)
    return None if freq is None else to_offset(freq)


def _candidate_offsets(index: pd.DatetimeIndex) -> list:
    """Frequencies to try for a series with gaps: those of a few runs of three consecutive timestamps."""
    found = []
    for start in sorted({0, len(index) // 3, len(index) // 2, 2 * len(index) // 3, len(index) - 3}):
        if 0 <= start <= len(index) - 3:
            freq = infer_offset(index[start:start + 3])
            if freq is not None and freq not in found:
                found.append(freq)
    steps = np.diff(index.to_numpy())  # timedelta64 in the index's unit (pandas 3: not always ns)
    if len(steps) and steps.min() > np.timedelta64(0):
        found.append(pd.Timedelta(steps.min()))
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


def datetime_grid(index: pd.DatetimeIndex, freq, name, label, ts_name, hint=""):
    """(grid, frequency) for one series' sorted timestamps: its frequency (``freq``, or inferred, also across
    gaps: the frequencies of a few runs of three timestamps are tried) and the regular grid from its first to its
    last timestamp. Irregular spacing, or fewer than 3 timestamps without ``freq``, is an ``InputError``."""
    if freq is not None:
        grid = _on_grid(index, freq) if len(index) > 1 else index
        if grid is None:
            raise InputError(f"{label}: series {_show(name)} has timestamps in column {ts_name!r} that are not on a "
                             f"{getattr(freq, 'freqstr', freq)} grid; check the frequency you passed")
        return grid, freq
    if len(index) < 3:
        raise InputError(f"{label}: series {_show(name)} has {len(index)} timestamp(s); at least 3 are needed to infer its "
                         f"frequency (or pass the frequency: {_option('freq')})")
    inferred = infer_offset(index)
    if inferred is not None:
        return index, inferred
    for candidate in _candidate_offsets(index):
        grid = _on_grid(index, candidate)
        if grid is not None:
            return grid, candidate
    raise InputError(f"{label}: series {_show(name)} has irregular timestamps in column {ts_name!r}; resample it to a "
                     f"regular frequency (or pass the frequency: {_option('freq')}){hint}")


def integer_grid(steps: np.ndarray, freq, name, label, ts_name, hint=""):
    """(grid, step) for one series' sorted integer time steps: the smallest difference (or ``freq``) must divide all."""
    if freq is not None and not isinstance(freq, (int, np.integer)):
        raise InputError(f"{label}: column {ts_name!r} holds integer steps, so the frequency must be an integer step, got {freq!r}")
    diffs = np.diff(steps)
    step = int(freq) if freq is not None else (int(diffs.min()) if len(diffs) else 1)
    if step <= 0 or np.any(diffs % step):
        raise InputError(f"{label}: series {_show(name)} has irregular integer steps in column {ts_name!r}; "
                         f"resample it to a regular step{hint}")
    return np.arange(steps[0], steps[-1] + step, step, dtype=np.int64), step
