"""One model interface for everything the harness runs.

A forecaster maps a list of 1-D histories to quantile forecasts::

    quantiles, mean = forecaster.predict_quantiles(series_list, horizon=H, levels=(0.1, ..., 0.9), season_length=m)
    # quantiles: (n_series, H, n_levels), mean: (n_series, H)

Adapters: ``ModelForecaster`` (any ``tirex.load_model`` source or an already loaded model), ``StatsForecaster``
(Seasonal Naive, Naive, AutoETS, AutoARIMA, AutoTheta from statsforecast, falling back to Seasonal Naive and
then Naive when a fit fails) and ``CallableForecaster`` (any function with the ``predict_quantiles`` signature).
``make_forecaster(name_or_source)`` picks one, ``validate_forecast`` checks what any of them returns.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np

QUANTILE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class ForecastError(ValueError):
    """A forecaster returned something the harness cannot score (wrong shape, NaN, crossing quantiles)."""


@runtime_checkable
class Forecaster(Protocol):
    """What the harness needs from a model."""

    name: str

    def predict_quantiles(
        self, series: Sequence[np.ndarray], horizon: int, levels: Sequence[float], season_length: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Forecast ``horizon`` steps of each 1-D history (NaN = missing).

        Returns ``quantiles`` of shape (len(series), horizon, len(levels)) and ``mean`` of shape
        (len(series), horizon).
        """
        ...


def validate_forecast(
    quantiles, mean, n_series: int, horizon: int, levels: Sequence[float], name: str = "model", fix_crossing=True
) -> tuple[np.ndarray, np.ndarray]:
    """Check a forecast's shape and values; return float64 copies with crossing quantiles sorted.

    Raises ``ForecastError`` with a message naming the model for a wrong shape or non-finite values.
    Crossing quantiles are sorted along the level axis (with a warning) when ``fix_crossing`` is set,
    otherwise they raise.
    """
    quantiles = np.asarray(quantiles, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    expected = (n_series, horizon, len(levels))
    if quantiles.shape != expected:
        raise ForecastError(f"{name} returned quantiles of shape {quantiles.shape}; expected {expected} "
                            "(series, horizon, quantile levels)")
    if mean.shape != expected[:2]:
        raise ForecastError(f"{name} returned a mean of shape {mean.shape}; expected {expected[:2]} (series, horizon)")
    for label, values in (("quantiles", quantiles), ("mean", mean)):
        bad = ~np.isfinite(values)
        if bad.any():
            rows = np.unique(np.nonzero(bad)[0])[:5].tolist()
            raise ForecastError(f"{name} returned {int(bad.sum())} non-finite {label} values (NaN or inf), "
                                f"e.g. in series {rows}; the harness cannot score such forecasts")
    crossing = np.diff(quantiles, axis=-1) < 0
    if crossing.any():
        message = f"{name} returned crossing quantiles in {int(crossing.any(axis=(1, 2)).sum())} series"
        if not fix_crossing:
            raise ForecastError(message)
        warnings.warn(message + "; sorting them along the level axis", stacklevel=2)
        quantiles = np.sort(quantiles, axis=-1)
    return quantiles, mean


def check_levels(levels: Sequence[float]) -> tuple[float, ...]:
    """Validate quantile levels: strictly increasing, inside (0, 1)."""
    levels = tuple(float(q) for q in levels)
    if not levels or any(not 0 < q < 1 for q in levels) or any(b <= a for a, b in zip(levels, levels[1:])):
        raise ValueError(f"quantile levels must be strictly increasing values in (0, 1); got {levels}")
    return levels


@dataclass
class CallableForecaster:
    """Wrap any function ``fn(series, horizon, levels, season_length) -> (quantiles, mean)``.

    >>> naive = CallableForecaster("last", lambda s, h, q, m: (np.stack([np.full((h, len(q)), x[-1]) for x in s]),
    ...                                                        np.stack([np.full(h, x[-1]) for x in s])))
    """

    name: str
    fn: Callable

    def predict_quantiles(self, series, horizon, levels, season_length=1):
        return self.fn(series, horizon, levels, season_length)


@dataclass
class ModelForecaster:
    """Adapter for our models: a ``tirex.load_model`` source (folder, .ckpt, Hub id) or a loaded model."""

    source: object = None
    name: str = "tirex"
    batch_size: int = 256
    model: object = field(default=None, repr=False)

    def __post_init__(self):
        if self.model is None:
            if self.source is not None and hasattr(self.source, "forecast"):
                self.model = self.source
            else:
                from tirex import load_model

                self.model = load_model(self.source) if self.source is not None else load_model()

    def predict_quantiles(self, series, horizon, levels, season_length=1):
        context = [np.asarray(x, dtype=np.float32) for x in series]
        quantiles, mean = self.model.forecast(context, prediction_length=horizon, quantile_levels=list(levels),
                                              output_type="numpy", batch_size=self.batch_size)
        return np.asarray(quantiles), np.asarray(mean)


@dataclass
class RayForecaster:
    """Our models with the forecasting step on Ray (``tirex.distributed.forecast_series``): model replicas in
    Ray actors, on a local Ray instance or the cluster at ``address`` (``RAY_ADDRESS`` when None). The model is
    loaded once here and its weights put into Ray's object store once; each call streams the series through
    an actor pool. Forecasts equal ``ModelForecaster``'s."""

    source: object = None
    name: str = "tirex"
    batch_size: int = 256
    address: str | None = None
    num_workers: int | None = None

    def __post_init__(self):
        from tirex.distributed import connect, ship_model

        connect(self.address)
        self.shipped = ship_model(self.source)

    def predict_quantiles(self, series, horizon, levels, season_length=1):
        from tirex.distributed import forecast_series

        context = [np.asarray(x, dtype=np.float32) for x in series]  # as ModelForecaster, for equal results
        return forecast_series(context, horizon, list(levels), self.shipped, batch_size=self.batch_size,
                               num_workers=self.num_workers)


ENGINES = ("local", "ray")


def forecaster_identity(forecaster) -> str:
    """What makes a forecaster's results what they are: its kind, name and settings, and for our models a
    fingerprint of the weights. Stored next to each cached result so that a rerun into the same folder
    with another model (or retrained weights under the same name) recomputes instead of serving them."""
    if isinstance(forecaster, (ModelForecaster, RayForecaster)):  # the same model gives the same results on either engine
        from tirex.loading import model_digest

        digest = forecaster.shipped.digest if isinstance(forecaster, RayForecaster) else model_digest(forecaster.model)
        return f"tirex model {forecaster.name} weights sha256:{digest[:16]}"
    if isinstance(forecaster, StatsForecaster):
        return f"statsforecast {forecaster.name} intervals={forecaster.intervals} max_context={forecaster.max_context}"
    if isinstance(forecaster, CallableForecaster):  # a function is the model its caller names it
        return f"callable {forecaster.name}"
    return f"{type(forecaster).__module__}.{type(forecaster).__qualname__} {getattr(forecaster, 'name', '')}"


def fill_missing(y: np.ndarray) -> np.ndarray:
    """Prepare a history for statistical models: drop leading NaNs, forward-fill the rest (all-NaN -> [0.0])."""
    y = np.asarray(y, dtype=np.float64)
    observed = np.isfinite(y)
    if not observed.any():
        return np.zeros(1)
    y = y[np.argmax(observed):]
    observed = np.isfinite(y)
    index = np.where(observed, np.arange(len(y)), 0)
    np.maximum.accumulate(index, out=index)
    return y[index]


def interval_levels(levels: Sequence[float]) -> list[int]:
    """Central interval coverages (percent) whose bounds are the requested quantile levels."""
    coverages = sorted({round(abs(200 * q - 100), 6) for q in levels if q != 0.5})
    for c in coverages:
        if c != int(c):
            raise ValueError(f"statsforecast baselines need levels on whole-percent intervals; got {levels}")
    return [int(c) for c in coverages]


def _quantiles_from_intervals(output: dict, levels: Sequence[float]) -> np.ndarray:
    # (horizon, n_levels): lower bound of the (100 - 200q)% interval for q < 0.5, upper bound for q > 0.5
    columns = []
    for q in levels:
        c = int(round(abs(200 * q - 100)))
        columns.append(output["mean"] if c == 0 else output[f"lo-{c}" if q < 0.5 else f"hi-{c}"])
    return np.stack(columns, axis=-1)


BASELINES = ("seasonal_naive", "naive", "auto_ets", "auto_arima", "auto_theta")


def _statsforecast_model(name: str, season_length: int):
    from statsforecast import models

    factories = {
        "seasonal_naive": lambda: models.SeasonalNaive(season_length=season_length),
        "naive": lambda: models.Naive(),
        "auto_ets": lambda: models.AutoETS(season_length=season_length),
        "auto_arima": lambda: models.AutoARIMA(season_length=season_length),
        "auto_theta": lambda: models.AutoTheta(season_length=season_length),
    }
    return factories[name]()


@dataclass
class StatsForecaster:
    """statsforecast baseline fitted per series, with normal prediction intervals turned into quantiles.

    When a fit fails or yields non-finite values the series falls back to Seasonal Naive, then to Naive, and
    finally to repeating the last value; ``fallbacks`` counts how often that happened. ``max_context`` trims
    histories (AutoARIMA on long hourly series is slow). ``intervals=False`` repeats the point forecast at every
    level (the default for Naive and Seasonal Naive, as in the published baselines).
    """

    name: str = "seasonal_naive"
    max_context: int | None = None
    intervals: bool | None = None
    fallbacks: int = 0

    def __post_init__(self):
        if self.name not in BASELINES:
            raise ValueError(f"unknown baseline {self.name!r}; choose one of {', '.join(BASELINES)}")
        try:  # without it every fit "failed" and each series silently got its last value repeated
            importlib.import_module("statsforecast")
        except ImportError as exc:
            raise ImportError(f"the {self.name} baseline needs statsforecast: pip install 'tirex[eval]'") from exc
        if self.intervals is None:
            # the published Naive / Seasonal Naive results of both leaderboards are point forecasts repeated at
            # every quantile level; the Auto* models use their normal prediction intervals
            self.intervals = self.name not in ("seasonal_naive", "naive")

    def _forecast_one(self, y: np.ndarray, horizon: int, levels, season_length: int) -> tuple[np.ndarray, np.ndarray]:
        coverages = interval_levels(levels) if self.intervals else None
        chain = [self.name] + [n for n in ("seasonal_naive", "naive") if n != self.name]
        for attempt, model_name in enumerate(chain):
            m = season_length if len(y) >= season_length else 1
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    output = _statsforecast_model(model_name, m).forecast(y=y, h=horizon, level=coverages)
                quantiles = (_quantiles_from_intervals(output, levels) if self.intervals
                             else np.repeat(np.asarray(output["mean"])[:, None], len(levels), axis=1))
                if np.isfinite(quantiles).all() and np.isfinite(output["mean"]).all():
                    self.fallbacks += attempt > 0
                    return quantiles, np.asarray(output["mean"])
            except Exception:  # any fit failure -> next model in the chain, as the benchmark baselines do
                pass
        self.fallbacks += 1
        last = np.full(horizon, y[-1])
        return np.repeat(last[:, None], len(levels), axis=1), last

    def predict_quantiles(self, series, horizon, levels, season_length=1):
        levels = check_levels(levels)
        quantiles, means = [], []
        for y in series:
            y = fill_missing(y)
            if self.max_context:
                y = y[-self.max_context:]
            q, mu = self._forecast_one(y, horizon, levels, max(int(season_length), 1))
            quantiles.append(q)
            means.append(mu)
        return np.stack(quantiles), np.stack(means)


def make_forecaster(spec, batch_size: int = 256, name: str | None = None, engine: str = "local",
                    address: str | None = None) -> Forecaster:
    """Build a forecaster from a baseline name, a ``load_model`` source, a loaded model, or a callable.

    ``engine="ray"`` runs our models' forecasting step on Ray (``RayForecaster``; ``address`` picks the
    cluster); baselines and callables always run locally, so they refuse it.

    >>> make_forecaster("seasonal_naive").name
    'seasonal_naive'
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "ray":
        ours = spec is None or (isinstance(spec, str) and spec.lower().replace("-", "_") not in
                                (*BASELINES, "fracast", "fracast_0")) or hasattr(spec, "save_pretrained")
        if not ours:
            raise ValueError("--engine ray runs our models (a load_model source or a loaded model); "
                             "baselines, fracast and callables run with the local engine")
        label = name or (str(spec).rstrip("/").split("/")[-1] if isinstance(spec, str) else "tirex")
        return RayForecaster(source=spec, name=label, batch_size=batch_size, address=address)
    if isinstance(spec, str) and spec.lower().replace("-", "_") in BASELINES:
        return StatsForecaster(spec.lower().replace("-", "_"))
    if isinstance(spec, str) and spec.lower().replace("-", "_") in ("fracast", "fracast_0"):
        from .fracast_adapter import FracastForecaster

        return FracastForecaster(batch_size=batch_size, name=name or "fracast_0")
    if hasattr(spec, "predict_quantiles"):
        return spec
    if hasattr(spec, "forecast"):
        return ModelForecaster(source=spec, name=name or "tirex", batch_size=batch_size)
    if callable(spec):
        return CallableForecaster(name or getattr(spec, "__name__", "callable"), spec)
    if spec is None or isinstance(spec, str):
        label = name or (str(spec).rstrip("/").split("/")[-1] if spec else "tirex")
        return ModelForecaster(source=spec, name=label, batch_size=batch_size)
    raise TypeError(f"cannot build a forecaster from {type(spec).__name__}; pass a baseline name "
                    f"({', '.join(BASELINES)}), a load_model source, a model, or a callable")
