"""Corpora of univariate series behind one interface: ``SeriesSet`` (float32 arrays + a frequency class each).

Readers:
- ``read_chronos``: the Chronos-datasets parquet layout (one row per series; list columns ``target``
  or several numeric list columns, optional ``timestamp`` list).
- ``read_arrow``: Hugging Face ``save_to_disk`` folders as GIFT-Eval / GiftEvalPretrain / LOTSA ship them
  (``data-*.arrow`` stream files with ``item_id``, ``start``, ``freq``, ``target``; a multivariate
  ``target`` (list of lists) becomes one series per variate). Parquet files with those columns work too.
- ``read_npz`` / ``SeriesSet.save_npz``: the compact local cache (values concatenated + offsets).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Frequency classes used for balancing and for the seasonal-naive baseline. One place for this fact.
# Forecast horizons by frequency class for model choice (GIFT-Eval's short-term horizons; 48 below daily).
FORECAST_HORIZON = {"Y": 6, "Q": 8, "M": 12, "W": 8, "D": 30}
DEFAULT_HORIZON = 48

# Strata of the frequency-stratified validation: frequency class -> stratum.
STRATUM = {"H": "hourly", "30min": "sub-hourly", "15min": "sub-hourly", "10min": "sub-hourly", "5min": "sub-hourly",
           "min": "sub-hourly", "S": "sub-hourly", "D": "daily", "W": "weekly", "M": "monthly", "Q": "quarterly",
           "Y": "yearly"}
STRATA = ("hourly", "sub-hourly", "daily", "weekly", "monthly", "quarterly", "yearly")

SEASON_LENGTH = {"Y": 1, "Q": 4, "M": 12, "W": 52, "D": 7, "H": 24, "30min": 48, "15min": 96, "10min": 144, "5min": 288, "min": 60, "S": 60, "unknown": 1}


_UNITS = {"H": "H", "D": "D", "B": "D", "W": "W", "M": "M", "MS": "M", "ME": "M", "BM": "M", "BMS": "M", "Q": "Q",
          "QS": "Q", "QE": "Q", "BQ": "Q", "A": "Y", "AS": "Y", "Y": "Y", "YS": "Y", "YE": "Y", "BA": "Y", "S": "S"}


def freq_class(freq: str | None) -> str:
    """Map a pandas-style frequency string ("H", "1h", "5T", "15min", "W-SUN", "MS", "A-DEC") to a class.

    Example:
        >>> freq_class("5T"), freq_class("W-SUN"), freq_class("QS-OCT")
        ('5min', 'W', 'Q')
    """
    m = re.fullmatch(r"(\d*)([A-Za-z]+)(?:-\w+)?", str(freq or "").strip())
    if not m:
        return "unknown"
    n, unit = int(m.group(1) or 1), m.group(2)
    if unit.upper() in ("T", "MIN"):
        return {5: "5min", 10: "10min", 15: "15min", 30: "30min", 60: "H"}.get(n, "min")
    return _UNITS.get(unit if unit in _UNITS else unit.upper(), "unknown")


@dataclass
class SeriesSet:
    """Named list of univariate float32 series (NaN = missing), each with a frequency class."""

    name: str
    values: list[np.ndarray] = field(default_factory=list)
    freqs: list[str] = field(default_factory=list)
    # what a validation series is: "series" (held out whole) or "tail" (only its last horizons are unseen)
    kinds: list[str] = field(default_factory=list)
    # where each series comes from: the name of the set it was added to ("pool", "pool/tails", ...)
    sources: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.kinds) != len(self.values):
            self.kinds = ["series"] * len(self.values)
        if len(self.sources) != len(self.values):
            self.sources = [self.name] * len(self.values)

    def __len__(self) -> int:
        return len(self.values)

    def add(self, values, freq: str, kind: str = "series") -> None:
        self.values.append(np.asarray(values, dtype=np.float32).ravel())
        self.freqs.append(freq)
        self.kinds.append(kind)
        self.sources.append(self.name)

    def extend(self, other: "SeriesSet") -> None:
        self.values.extend(other.values)
        self.freqs.extend(other.freqs)
        self.kinds.extend(other.kinds)
        self.sources.extend(other.sources)

    @property
    def num_values(self) -> int:
        return int(sum(len(v) for v in self.values))

    def subset(self, index, name: str | None = None) -> "SeriesSet":
        return SeriesSet(name or self.name, [self.values[i] for i in index], [self.freqs[i] for i in index],
                         [self.kinds[i] for i in index], [self.sources[i] for i in index])

    def clean(self, min_length: int) -> tuple["SeriesSet", dict[str, int]]:
        """Trim leading/trailing NaN and drop series with fewer than ``min_length`` values; counts what was dropped."""
        kept = SeriesSet(self.name)
        dropped = {"all_nan": 0, "too_short": 0}
        for v, f in zip(self.values, self.freqs):
            v = np.where(np.isfinite(v), v, np.nan).astype(np.float32)
            observed = np.flatnonzero(~np.isnan(v))
            if observed.size == 0:
                dropped["all_nan"] += 1
                continue
            v = v[observed[0] : observed[-1] + 1]
            if len(v) < min_length or observed.size < min(min_length, 8):
                dropped["too_short"] += 1
                continue
            kept.add(v, f)
        return kept, dropped

    def split_by_series(self, val_fraction: float, salt: str = "") -> tuple["SeriesSet", "SeriesSet"]:
        """Deterministic train/validation split by series (a hash of the series' position and name)."""
        train, val = [], []
        for i in range(len(self)):
            h = zlib.crc32(f"{salt}{self.name}/{i}".encode()) / 2**32
            (val if h < val_fraction else train).append(i)
        return self.subset(train, self.name), self.subset(val, self.name + "/val")

    def save_npz(self, path: str | Path) -> None:
        lengths = np.array([len(v) for v in self.values], dtype=np.int64)
        flat = np.concatenate(self.values) if self.values else np.zeros(0, np.float32)
        np.savez_compressed(path, values=flat, lengths=lengths, freqs=np.array(self.freqs, dtype=str), name=np.array(self.name))


def read_npz(path: str | Path, name: str | None = None) -> SeriesSet:
    """Read a cache written by ``SeriesSet.save_npz``."""
    with np.load(path, allow_pickle=False) as z:
        offsets = np.concatenate([[0], np.cumsum(z["lengths"])])
        flat = z["values"]
        out = SeriesSet(name or str(z["name"]))
        for i, f in enumerate(z["freqs"]):
            out.add(flat[offsets[i] : offsets[i + 1]], str(f))
    return out


def _files(path: Path, patterns: tuple[str, ...]) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"corpus path {path} does not exist")
    return sorted(p for pat in patterns for p in path.rglob(pat))


def _infer_freq(timestamps) -> str:
    try:
        import pandas as pd

        from tirex.timestamps import infer_offset

        ts = pd.DatetimeIndex(np.asarray(timestamps)[:50])
        offset = infer_offset(ts) if len(ts) >= 3 else None
        return freq_class(offset.freqstr) if offset is not None else "unknown"
    except Exception:
        return "unknown"


def _list_values(column) -> tuple[np.ndarray, np.ndarray]:
    """A list<number> Arrow column as (flat float64 values with NaN for nulls, offsets)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = arr.offsets.to_numpy() - arr.offsets[0].as_py()
    flat = pc.cast(arr.flatten(), pa.float64()).fill_null(float("nan")).to_numpy(zero_copy_only=False)
    return flat, offsets


def _add_table(out: SeriesSet, table, max_series: int | None) -> None:
    """Append the series of one Arrow table (Chronos or GIFT-Eval columns), vectorised over rows."""
    import pyarrow as pa

    def numeric_list(t) -> bool:
        return pa.types.is_list(t) or pa.types.is_large_list(t)

    cols = table.column_names
    skip = {"timestamp", "item_id", "id", "start", "freq", "past_feat_dynamic_real", "feat_static_cat"}
    targets = ["target"] if "target" in cols else [
        c for c in cols if c not in skip and numeric_list(table.schema.field(c).type)
        and (pa.types.is_floating(table.schema.field(c).type.value_type) or pa.types.is_integer(table.schema.field(c).type.value_type))
    ]
    rows = table.num_rows if max_series is None else min(table.num_rows, max(0, max_series - len(out)))
    table = table.slice(0, rows)
    if "freq" in cols:
        freqs = [freq_class(f) for f in table.column("freq").to_pylist()]
    elif "timestamp" in cols and rows:
        first = table.column("timestamp")[0].values.to_numpy(zero_copy_only=False)
        freqs = [_infer_freq(first)] * rows  # one frequency per Chronos dataset file
    else:
        freqs = ["unknown"] * rows
    for c in targets:
        column = table.column(c).combine_chunks()
        if numeric_list(column.type.value_type):  # multivariate: one series per variate
            inner_flat, inner_off = _list_values(column.flatten())
            outer = column.offsets.to_numpy() - column.offsets[0].as_py()
            for row in range(rows):
                for k in range(outer[row], outer[row + 1]):
                    out.add(inner_flat[inner_off[k] : inner_off[k + 1]], freqs[row])
        else:
            flat, off = _list_values(column)
            for row in range(rows):
                out.add(flat[off[row] : off[row + 1]], freqs[row])


def read_chronos(path: str | Path, name: str | None = None, max_series: int | None = None) -> SeriesSet:
    """Series from Chronos-datasets parquet files (a file or a folder searched recursively)."""
    import pyarrow.parquet as pq

    path = Path(path)
    out = SeriesSet(name or path.name)
    for f in _files(path, ("*.parquet",)):
        _add_table(out, pq.read_table(f), max_series)
    return out


def read_arrow(path: str | Path, name: str | None = None, max_series: int | None = None) -> SeriesSet:
    """Series from GIFT-Eval / GiftEvalPretrain / LOTSA Arrow folders (also their parquet exports)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    out = SeriesSet(name or path.name)
    for f in _files(path, ("*.arrow", "*.parquet")):
        if f.suffix == ".parquet":
            table = pq.read_table(f)
        else:
            try:
                with pa.memory_map(str(f)) as source:
                    table = pa.ipc.open_stream(source).read_all()
            except pa.ArrowInvalid:
                with pa.memory_map(str(f)) as source:
                    table = pa.ipc.open_file(source).read_all()
        _add_table(out, table, max_series)
    return out
