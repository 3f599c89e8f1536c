"""Corpus loading, the held-out validation slice, and the ``LightningDataModule`` that serves both."""

from __future__ import annotations

import logging

import lightning as L
import numpy as np
import torch

from .config import REAL_SOURCE_TYPES, TrainConfig
from .corpus import DEFAULT_HORIZON, FORECAST_HORIZON, SEASON_LENGTH, SeriesSet, read_arrow, read_chronos, read_npz
from .pool import load_extra_pool, load_pool
from .sampling import MixtureSampler, StepBatches, left_pad

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A corpus that cannot be trained on (no usable series); raised before training starts."""


def _read_source(source, cache_dir) -> SeriesSet:
    if source.type in ("pool", "pool_extra"):
        try:
            return load_pool(cache_dir) if source.type == "pool" else load_extra_pool(cache_dir)
        except ValueError as exc:
            raise DataError(str(exc)) from exc
    readers = {"chronos": read_chronos, "arrow": read_arrow}
    if source.type == "npz":
        return read_npz(source.path, source.name)
    try:
        return readers[source.type](source.path, source.name, source.max_series)
    except FileNotFoundError as exc:
        raise DataError(f"data source {source.name!r}: {exc}") from exc


def load_sources(config: TrainConfig) -> dict[str, SeriesSet]:
    """Read and clean every real source; raise ``DataError`` for a source with no usable series."""
    out = {}
    min_len = config.min_series_length
    for source in config.data.sources:
        if source.type not in REAL_SOURCE_TYPES:
            continue
        raw = _read_source(source, config.data.cache_dir)
        if source.max_series is not None:
            raw = raw.subset(range(min(len(raw), source.max_series)))
        clean, dropped = raw.clean(min_len)
        if len(clean) == 0:
            where = f" at {source.path}" if source.path else ""
            raise DataError(
                f"data source {source.name!r}{where} has no usable series: read {len(raw)} series, "
                f"{dropped['all_nan']} all-NaN, {dropped['too_short']} shorter than {min_len} values "
                f"(patch_size {config.model.patch_size} + data.min_context_values {config.data.min_context_values})"
            )
        if dropped["all_nan"] or dropped["too_short"]:
            log.info("%s: dropped %d all-NaN and %d too-short series", source.name, dropped["all_nan"], dropped["too_short"])
        out[source.name] = clean
    return out


def split_sources(config: TrainConfig, real: dict[str, SeriesSet]) -> tuple[dict[str, SeriesSet], SeriesSet]:
    """Hold out series for validation: each real source's ``val_fraction`` of series, whole (by series), and,
    with ``data.val_tail_windows``, the last horizons of long training series of ``data.val_tail_freqs``
    (the training copy ends before them; the validation copy is the whole series, kind "tail")."""
    d = config.data
    fractions = {s.name: (s.val_fraction if s.val_fraction is not None else d.val_fraction) for s in d.sources}
    train, val = {}, SeriesSet("val")
    for name, series in real.items():
        tr, va = series.split_by_series(fractions.get(name, d.val_fraction))
        if len(tr) == 0:
            raise DataError(f"data source {name!r}: every series went to validation; lower data.val_fraction")
        if d.val_tail_windows:
            tr, tails = _cut_tails(tr, config)
            va.extend(tails)
        train[name] = tr
        val.extend(va)
    if len(val) > d.val_max_series:  # a fixed, spread-out subset
        keep = np.random.default_rng(12345).choice(len(val), config.data.val_max_series, replace=False)
        val = val.subset(np.sort(keep), "val")
    return train, val


def _cut_tails(series: SeriesSet, config: TrainConfig) -> tuple[SeriesSet, SeriesSet]:
    d = config.data
    train, tails = SeriesSet(series.name), SeriesSet(series.name + "/tails")
    for x, f in zip(series.values, series.freqs):
        cut = d.val_tail_windows * FORECAST_HORIZON.get(f, DEFAULT_HORIZON)
        if f in d.val_tail_freqs and len(x) >= max(d.val_tail_min_length, cut + config.min_series_length):
            train.add(x[:-cut], f)
            tails.add(x, f, kind="tail")
        else:
            train.add(x, f)
    return train, tails


def seasonal_naive(context: np.ndarray, season: int, horizon: int) -> np.ndarray:
    """Seasonal-naive forecast from a NaN-padded context (last observed value where a season is not available)."""
    observed = np.flatnonzero(~np.isnan(context))
    last_seen = np.maximum.accumulate(np.where(np.isnan(context), 0, np.arange(len(context))))
    x = context[last_seen]  # forward fill gaps (leading NaN stay NaN: index 0 is NaN there)
    n_obs = len(x) - observed[0]
    if season <= 1 or season > n_obs:
        return np.full(horizon, x[-1], dtype=np.float32)
    h = np.arange(1, horizon + 1)
    return x[len(x) - 1 + h - season * np.ceil(h / season).astype(int)].astype(np.float32)


def validation_windows(config: TrainConfig, val: SeriesSet) -> torch.utils.data.TensorDataset:
    """The last context + patch of every held-out series: inputs (N, L), targets (N, P), seasonal naive (N, P)."""
    p, ctx = config.model.patch_size, config.model.context_length
    inputs, targets, naive = [], [], []
    for x, f in zip(val.values, val.freqs):
        w = left_pad(x, ctx + p)
        if np.isnan(w[-p:]).all() or np.count_nonzero(~np.isnan(w[:ctx])) < config.data.min_context_values:
            continue
        inputs.append(w[:ctx])
        targets.append(w[ctx:])
        naive.append(seasonal_naive(w[:ctx], SEASON_LENGTH.get(f, 1), p))
    as_tensor = lambda a: torch.from_numpy(np.stack(a).astype(np.float32))  # noqa: E731
    return torch.utils.data.TensorDataset(as_tensor(inputs), as_tensor(targets), as_tensor(naive))


class PretrainDataModule(L.LightningDataModule):
    """Serves the endless training stream and the fixed validation windows.

    ``prepare_corpora()`` reads everything and raises ``DataError`` / ``ConfigError`` early; it runs
    in ``setup`` if the caller did not run it before building the Trainer.
    """

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        self.config = config
        self.train_sets: dict[str, SeriesSet] | None = None
        self.val_set: SeriesSet | None = None
        self.val_data = None

    def prepare_corpora(self) -> None:
        if self.train_sets is not None:
            return
        real = load_sources(self.config)
        self.train_sets, self.val_set = split_sources(self.config, real)
        # Fail now, not in a worker: frequency weights that match nothing.
        MixtureSampler(self.config, self.train_sets)
        self.val_data = validation_windows(self.config, self.val_set) if len(self.val_set) else None
        if self.val_data is not None and len(self.val_data) == 0:
            self.val_data = None

    def setup(self, stage: str | None = None) -> None:
        self.prepare_corpora()

    def _start_step(self) -> int:
        trainer = self.trainer
        if trainer is None:
            return 0
        return trainer.global_step * trainer.accumulate_grad_batches

    def train_dataloader(self):
        rank = self.trainer.global_rank if self.trainer is not None else 0
        sampler = MixtureSampler(self.config, self.train_sets, rank=rank)
        workers = self.config.data.num_workers
        return torch.utils.data.DataLoader(
            StepBatches(sampler, self._start_step()), batch_size=None, num_workers=workers,
            prefetch_factor=4 if workers else None, persistent_workers=False,
        )

    def val_dataloader(self):
        if self.val_data is None:
            return []
        return torch.utils.data.DataLoader(self.val_data, batch_size=max(self.config.data.batch_size, 256), shuffle=False)
