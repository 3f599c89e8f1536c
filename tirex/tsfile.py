"""Reading collections of labelled series for classification: ``.ts`` files (the UCR/UEA archive format
that aeon and sktime write) and CSV/Parquet tables, into aeon's conventions (a list of (channels, time)
arrays) plus labels.

``.ts``: header lines ``@problemName``, ``@univariate``, ``@dimensions``, ``@equalLength``,
``@classLabel true a b c`` or ``@targetLabel true`` (regression), then ``@data`` and one case per line:
channels separated by ``:``, values by ``,``, ``?`` or ``NaN`` for missing, the label last. Lines starting
with ``#`` are comments. Files with ``@timeStamps true`` are not supported.

Tables (``read_collection_table``): long layout, one row per value, with a case id column
(``case_id``, ``item_id``, ``id``, ...), a value column (``value``, ``target``), optionally a ``channel``
column and a time column (``timestamp``, ``time``, ``t``, ...) to order by, and the label column; or wide
layout, one row per case: a label column and one column per time point (empty cells at the end = a
shorter series). Label columns: ``label``, ``class``, ``y`` (or ``--label-column``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .io import InputError, read_table

CASE_COLUMNS = ("case_id", "case", "item_id", "id", "unique_id", "series_id")
VALUE_COLUMNS = ("value", "target")
CHANNEL_COLUMNS = ("channel", "dim", "dimension", "variable")
ORDER_COLUMNS = ("timestamp", "time", "t", "step", "ds", "date")
LABEL_COLUMNS = ("label", "class", "y")
MISSING = {"?", "nan", "NaN", "NA", ""}


@dataclass
class LabelledCollection:
    """Cases (each (channels, time) float64), their labels (None if the file has none) and their names."""

    cases: list[np.ndarray]
    labels: np.ndarray | None
    ids: list[str]
    regression: bool | None = None  # what the file declares (.ts); None when it does not say


def read_collection(path, label_column: str | None = None) -> LabelledCollection:
    """A ``.ts`` file or a CSV/Parquet table -> ``LabelledCollection`` (errors are ``InputError``)."""
    path = Path(path)
    if path.suffix.lower() == ".ts":
        return read_ts(path)
    return read_collection_table(read_table(path), path, label_column)


def _number(text: str, path, line_no: int) -> float:
    text = text.strip()
    if text in MISSING:
        return float("nan")
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{path}, line {line_no}: {text[:30]!r} is not a number (use ? or NaN for missing)") from None


def read_ts(path) -> LabelledCollection:
    """Read a ``.ts`` file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    header: dict[str, str] = {}
    cases, labels = [], []
    in_data = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_no, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                if not line.startswith("@"):
                    raise InputError(f"{path}, line {line_no}: expected a @header line or @data before the values")
                key, _, value = line[1:].partition(" ")
                key = key.lower()
                if key == "data":
                    in_data = True
                    has_label = _declares_label(header, path)
                    classes = header.get("classlabel", "").split()[1:]
                else:
                    header[key] = value.strip()
                continue
            parts = line.split(":")
            if has_label:
                if len(parts) < 2:
                    raise InputError(f"{path}, line {line_no}: no label after the values (expected values:label)")
                label = parts.pop().strip()
                if classes and label not in classes:
                    raise InputError(f"{path}, line {line_no}: label {label!r} is not among the declared classes {classes}")
                labels.append(_number(label, path, line_no) if "targetlabel" in header else label)
            channels = [[_number(v, path, line_no) for v in part.split(",")] for part in parts]
            lengths = {len(c) for c in channels}
            if len(lengths) > 1:
                raise InputError(f"{path}, line {line_no}: channels of different lengths {sorted(lengths)} within one case")
            if cases and len(channels) != cases[0].shape[0]:
                raise InputError(f"{path}, line {line_no}: {len(channels)} channel(s), but the first case has {cases[0].shape[0]}")
            cases.append(np.asarray(channels, dtype=np.float64))
    if not in_data:
        raise InputError(f"{path}: no @data line; is this a .ts file?")
    if not cases:
        raise InputError(f"{path}: no cases after @data")
    regression = "targetlabel" in header and header["targetlabel"].lower().startswith("true")
    return LabelledCollection(cases, np.asarray(labels) if has_label else None,
                              [str(i) for i in range(len(cases))], regression if has_label else None)


def _declares_label(header: dict[str, str], path) -> bool:
    if header.get("timestamps", "false").lower().startswith("true"):
        raise InputError(f"{path}: .ts files with @timeStamps true are not supported; write the values without timestamps")
    for key in ("classlabel", "targetlabel"):
        if key in header:
            return header[key].lower().startswith("true")
    return False


def _find(columns, given, candidates, what, path) -> str | None:
    if given is not None:
        if given not in columns:
            raise InputError(f"{path}: no column {given!r} ({what}); columns are {list(columns)}")
        return given
    lower = {str(c).lower(): c for c in columns}
    return next((lower[c] for c in candidates if c in lower), None)


def read_collection_table(df: pd.DataFrame, path="<table>", label_column: str | None = None) -> LabelledCollection:
    """A long or wide table (see the module docstring) -> ``LabelledCollection``."""
    label = _find(df.columns, label_column, LABEL_COLUMNS, "label", path)
    case = _find(df.columns, None, CASE_COLUMNS, "case id", path)
    if case is None:
        return _wide(df, path, label)
    value = _find(df.columns, None, tuple(c for c in VALUE_COLUMNS if c != str(label).lower()), "value", path)
    if value is None:
        raise InputError(f"{path}: a long table needs a value column (looked for {list(VALUE_COLUMNS)}) next to {case!r}")
    channel = _find(df.columns, None, CHANNEL_COLUMNS, "channel", path)
    order = _find(df.columns, None, ORDER_COLUMNS, "time", path)
    values = pd.to_numeric(df[value], errors="coerce")
    bad = values.isna() & df[value].notna()
    if bad.any():
        raise InputError(f"{path}: column {value!r} has a non-numeric value ({df[value][bad].iloc[0]!r}); leave missing values empty")
    frame = df.assign(**{value: values})
    if order is not None:
        frame = frame.sort_values([case, order], kind="stable")
    cases, labels, ids = [], [], []
    for item, group in frame.groupby(case, sort=False):
        parts = [g[value].to_numpy(np.float64) for _, g in group.groupby(channel, sort=True)] if channel else [group[value].to_numpy(np.float64)]
        if len({len(p) for p in parts}) > 1:
            raise InputError(f"{path}: case {item!r} has channels of different lengths; every channel needs the same time points")
        if label is not None:
            seen = group[label].dropna().unique()
            if len(seen) != 1:
                raise InputError(f"{path}: case {item!r} has {len(seen)} different labels in column {label!r}; a case has one label")
            labels.append(seen[0])
        cases.append(np.stack(parts))
        ids.append(str(item))
    return LabelledCollection(cases, np.asarray(labels) if label is not None else None, ids)


def _wide(df: pd.DataFrame, path, label: str | None) -> LabelledCollection:
    value_cols = [c for c in df.columns if c != label]
    if not value_cols:
        raise InputError(f"{path}: no value columns; a wide table has one row per case and one column per time point")
    values = df[value_cols].apply(pd.to_numeric, errors="coerce")
    bad = values.isna() & df[value_cols].notna()
    if bad.to_numpy().any():
        column = value_cols[int(np.argmax(bad.to_numpy().any(axis=0)))]
        raise InputError(f"{path}: column {column!r} has a non-numeric value; every column but the label holds values")
    cases = []
    for row in values.to_numpy(np.float64):
        observed = np.flatnonzero(~np.isnan(row))
        cases.append(row[: observed[-1] + 1 if observed.size else row.size][None])  # trailing empties: shorter
    labels = df[label].to_numpy() if label is not None else None
    if labels is not None and pd.isna(labels).any():
        raise InputError(f"{path}: column {label!r} has an empty label (row {int(np.argmax(pd.isna(labels)))})")
    return LabelledCollection(cases, labels, [str(i) for i in df.index])
