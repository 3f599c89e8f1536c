"""Property-based fuzzing of forecast's inputs (Hypothesis): every input gives a clear exception of a documented
type, or a finite forecast of the right shape with quantiles that never decrease with the level.

Bounded in time: a tiny model and a fixed number of examples per property (``TIREX_FUZZ_EXAMPLES``, default 120;
about 20 s in all on 2 cores). Run longer with e.g. ``TIREX_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py``.
"""

import os
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import tiny_model

EXAMPLES = int(os.environ.get("TIREX_FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                             HealthCheck.function_scoped_fixture])
DOCUMENTED = (ValueError, TypeError)  # README "Bad input": InputError, CheckpointError... are ValueErrors


@pytest.fixture(scope="module")
def model():
    return tiny_model(num_blocks=1, noise=0.1)  # crossing quantiles, as an untrained model has them


def check_forecast(q, mean, n_series, horizon, levels):
    event("forecast")
    q, mean = torch.as_tensor(q), torch.as_tensor(mean)
    assert q.shape == (n_series, horizon, len(levels)) and mean.shape == (n_series, horizon)
    assert q.dtype in (torch.float32, torch.float64)
    assert torch.isfinite(q).all() and torch.isfinite(mean).all()
    by_level = q[..., np.argsort(levels, kind="stable")]
    assert (by_level.diff(dim=-1) >= 0).all(), "quantiles decrease with the level"


# ------------------------------------------------------------------------------------------------ arrays
magnitudes = st.sampled_from([0.0, 1e-300, 1e-40, 1e-8, 1.0, 1e8, 1e30, 1e39, 1e300])
dtypes = st.sampled_from([np.float64, np.float32, np.float16, np.int64, np.int8, np.uint8, np.bool_])


@st.composite
def arrays(draw):
    dtype = draw(dtypes)
    shape = draw(st.one_of(st.tuples(st.integers(1, 90)), st.tuples(st.integers(1, 4), st.integers(1, 70)),
                           st.sampled_from([(), (0,), (0, 5), (3, 0), (2, 2, 3), (4, 1)])))
    if np.dtype(dtype).kind == "f":
        elements = st.one_of(st.floats(-2, 2, width=16), st.floats(-2, 2, width=16), st.just(np.nan),
                             st.just(np.inf), st.just(-np.inf))
        values = draw(hnp.arrays(np.float64, shape, elements=elements))
        with np.errstate(over="ignore", invalid="ignore"):
            return (values * draw(magnitudes)).astype(dtype)
    return draw(hnp.arrays(dtype, shape))


good_levels = st.lists(st.floats(0.001, 0.999), min_size=1, max_size=6, unique=True)
levels_strategy = st.one_of(
    st.none(), good_levels, good_levels,
    st.sampled_from([[], [0.0], [1.0], [-0.1, 0.5], [float("nan")], ["0.5"], [0.5, 0.5], [True], 0.5]),
)
horizons = st.one_of(st.integers(1, 140), st.integers(1, 140), st.integers(1, 140),
                     st.sampled_from([0, -1, 2.5, "7", True, None, 10**6]))


@FUZZ
@given(context=arrays(), horizon=horizons, levels=levels_strategy, as_tensor=st.booleans())
# found by this test: an interpolated level one unit in the last place above its neighbour (equal quantiles)
@example(context=np.full(5, 6.875e-09), horizon=1, levels=[0.5, 0.484375], as_tensor=False)
def test_arrays_and_tensors(model, context, horizon, levels, as_tensor):
    if as_tensor and context.dtype != np.uint8 or context.dtype == np.bool_:
        context = torch.from_numpy(np.ascontiguousarray(context))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # inf as missing, column vectors: documented warnings
        try:
            q, mean = model.forecast(context, horizon, quantile_levels=levels)
        except DOCUMENTED as exc:
            event(f"refused: {type(exc).__name__}")
            return
    n = 1 if context.ndim == 1 else context.shape[0]
    check_forecast(q, mean, n, horizon, levels if levels is not None else model.config.quantile_levels)


series_values = st.lists(st.one_of(st.floats(-1e6, 1e6), st.none(), st.just(float("nan")), st.integers(-5, 5)),
                         min_size=0, max_size=60)


@FUZZ
@given(context=st.lists(series_values, min_size=0, max_size=5), horizon=st.integers(1, 40))
def test_ragged_lists_with_json_nulls(model, context, horizon):
    try:
        q, mean = model.forecast(context, horizon)
    except DOCUMENTED as exc:
        event(f"refused: {type(exc).__name__}")
        return
    check_forecast(q, mean, len(context), horizon, model.config.quantile_levels)


@FUZZ
@given(items=st.lists(st.one_of(st.text(max_size=3), st.floats(), st.none(), st.complex_numbers(),
                                st.booleans()), min_size=1, max_size=30), horizon=st.integers(1, 10))
@example(items=[1.7976931348622453e308], horizon=1)  # found by this test: the power of two overflowed
def test_object_arrays_of_anything(model, items, horizon):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            q, mean = model.forecast(np.array(items, dtype=object), horizon)
        except DOCUMENTED as exc:
            event(f"refused: {type(exc).__name__}")
            return
    check_forecast(q, mean, 1, horizon, model.config.quantile_levels)


# ------------------------------------------------------------------------------------------------ tables
frequencies = st.sampled_from(["h", "D", "W-SUN", "MS", "ME", "QS", "YS", "15min"])


@st.composite
def timestamps(draw, n, corrupt):
    kind = draw(st.sampled_from(["dates", "dates", "text", "epoch", "steps"]))
    start = pd.Timestamp(draw(st.datetimes(min_value=pd.Timestamp("1990-01-01").to_pydatetime(),
                                           max_value=pd.Timestamp("2030-01-01").to_pydatetime()))).floor("D")
    freq = draw(frequencies)
    stamps = pd.date_range(start if freq not in ("MS", "QS", "YS") else start.replace(day=1, month=1), periods=n,
                           freq=freq)
    out = {"text": lambda: list(stamps.strftime("%Y-%m-%d %H:%M:%S")), "epoch": lambda: list(stamps.asi8 // 10**9),
           "steps": lambda: list(range(0, 3 * n, 3)), "dates": lambda: list(stamps)}[kind]()
    if corrupt == "timestamp" and n:
        out[draw(st.integers(0, n - 1))] = draw(st.one_of(st.text(max_size=4), st.none(), st.just(2.5)))
    if corrupt == "duplicate" and n > 1:
        out[-1] = out[-2]
    return out


@st.composite
def frames(draw):
    corrupt = draw(st.sampled_from([None, None, None, None, "value", "timestamp", "id", "duplicate", "short"]))
    n_series = draw(st.integers(1, 3))
    parts = []
    for k in range(n_series):
        n = draw(st.integers(0, 2)) if corrupt == "short" else draw(st.integers(4, 40))
        stamps = draw(timestamps(n, corrupt))
        values = draw(st.lists(st.one_of(st.floats(-1e3, 1e3), st.floats(-1e3, 1e3), st.none()), min_size=n, max_size=n))
        if corrupt == "value" and n:
            values[draw(st.integers(0, n - 1))] = draw(st.sampled_from(["x", "1,5", True, 1 + 2j]))
        part = pd.DataFrame({"timestamp": pd.Series(stamps, dtype=object), "target": pd.Series(values, dtype=object)})
        if draw(st.booleans()):  # gaps
            part = part.drop(index=part.index[draw(st.integers(1, max(1, n - 1))):][:draw(st.integers(0, 2))])
        parts.append(part.assign(item_id=None if corrupt == "id" and k == 0 else f"s{k}" if k % 2 else k))
    frame = pd.concat(parts, ignore_index=True)
    for column in ("timestamp", "target"):
        numeric = frame[column].map(lambda v: v is None or isinstance(v, (int, float)) and not isinstance(v, bool))
        if numeric.all():
            frame[column] = pd.to_numeric(frame[column])
        elif column == "timestamp" and frame[column].map(lambda v: isinstance(v, pd.Timestamp)).all():
            frame[column] = pd.to_datetime(frame[column])
    if draw(st.booleans()):
        frame = frame.sample(frac=1.0, random_state=0)  # any row order
    return frame.rename(columns=draw(st.sampled_from([{}, {"item_id": "id", "timestamp": "ds", "target": "y"},
                                                      {"item_id": "store"}])))


@FUZZ
@given(frame=frames(), horizon=st.integers(1, 30))
def test_long_dataframes(model, frame, horizon):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            out = model.forecast(frame, horizon)
        except DOCUMENTED as exc:
            event(f"refused: {type(exc).__name__}")
            return
    event("forecast")
    levels = [c for c in out.columns if c.replace(".", "", 1).isdigit()]
    ids = out.iloc[:, 0]
    assert len(out) == ids.nunique() * horizon
    values = out[levels].to_numpy(np.float64)
    assert np.isfinite(values).all() and np.isfinite(out["mean"].to_numpy(np.float64)).all()
    assert (np.diff(values, axis=1) >= 0).all()
    for _, group in out.groupby(ids.name, sort=False):
        stamps = group.iloc[:, 1]
        assert stamps.is_monotonic_increasing and stamps.is_unique  # future timestamps, in order


@FUZZ
@given(values=st.lists(st.one_of(st.floats(-1e4, 1e4), st.none()), min_size=0, max_size=50),
       freq=st.one_of(st.none(), frequencies), horizon=st.integers(1, 20), drop=st.integers(0, 5))
def test_pandas_series(model, values, freq, horizon, drop):
    index = pd.RangeIndex(len(values)) if freq is None else pd.date_range("2020-01-01", periods=len(values), freq=freq)
    series = pd.Series(np.array(values, dtype=float), index=index)
    series = series.drop(series.index[drop::7]) if len(series) else series
    try:
        out = model.forecast(series, horizon)
    except DOCUMENTED as exc:
        event(f"refused: {type(exc).__name__}")
        return
    event("forecast")
    assert len(out) == horizon and np.isfinite(out.to_numpy()).all()
    assert (np.diff(out.drop(columns="mean").to_numpy(), axis=1) >= 0).all()
    assert out.index[0] > series.index[-1]
