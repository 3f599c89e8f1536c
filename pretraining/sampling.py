"""Training windows: a deterministic function of (seed, rank, step), so a resumed run sees the same data.

One training example is a window of ``context_length + patch_size`` values, right-aligned:
``inputs = window[:L]`` (the context, with contiguous patch masking applied) and
``targets = window[P:]`` (the next patch at every token). Contexts have varying length: with
``short_window_prob`` a window keeps only a random number of the most recent values and is
left-padded with NaN, like short series at inference.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from .config import REAL_SOURCE_TYPES, TrainConfig
from .corpus import SeriesSet
from .synthetic import augment, calendar_synth, kernel_synth, level_shifts, tsmixup


class FrequencyBalancedPicker:
    """Picks a series: first a frequency class by weight, then a series uniformly within it (balance by series)."""

    def __init__(self, series: SeriesSet, freq_weights: dict[str, float] | None = None) -> None:
        self.series = series
        groups: dict[str, list[int]] = defaultdict(list)
        for i, f in enumerate(series.freqs):
            groups[f].append(i)
        self.freqs = sorted(groups)
        self.index = [np.array(groups[f]) for f in self.freqs]
        w = np.array([1.0 if freq_weights is None else float(freq_weights.get(f, 0.0)) for f in self.freqs])
        if w.sum() <= 0:
            raise ValueError(
                f"{series.name}: freq_weights {freq_weights} give zero weight to every frequency present ({self.freqs})"
            )
        self.weights = w / w.sum()

    def pick(self, rng: np.random.Generator) -> np.ndarray:
        group = self.index[rng.choice(len(self.freqs), p=self.weights)]
        return self.series.values[group[rng.integers(len(group))]]


def random_window(rng: np.random.Generator, x: np.ndarray, length: int, min_context: int, patch_size: int) -> np.ndarray:
    """The ``length`` values ending at a random point (at least ``min_context`` values before the last patch)."""
    lo = min(len(x), min_context + patch_size)
    end = int(rng.integers(lo, len(x) + 1))
    return x[max(0, end - length) : end]


def left_pad(x: np.ndarray, length: int) -> np.ndarray:
    if len(x) >= length:
        return x[len(x) - length :]
    return np.concatenate([np.full(length - len(x), np.nan, dtype=np.float32), x.astype(np.float32)])


def mask_patches(rng: np.random.Generator, inputs: np.ndarray, cfg, patch_size: int, min_observed: int) -> np.ndarray:
    """Contiguous patch masking on a right-aligned context: whole patches set to NaN."""
    n_tokens = len(inputs) // patch_size
    observed = np.flatnonzero(~np.isnan(inputs))
    first = observed[0] // patch_size if observed.size else 0  # runs land on data, not on the left padding
    masked = inputs.copy()
    if rng.random() < cfg.prob:
        run = min(int(rng.integers(1, cfg.max_run_patches + 1)), n_tokens - first)
        start = int(rng.integers(first, n_tokens - run + 1))
        masked[start * patch_size : (start + run) * patch_size] = np.nan
    if rng.random() < cfg.end_prob:
        run = int(rng.integers(1, cfg.max_end_patches + 1))
        masked[(n_tokens - run) * patch_size :] = np.nan
    if np.count_nonzero(~np.isnan(masked)) < min_observed:  # keep something to scale and forecast from
        return inputs
    return masked


class MixtureSampler:
    """Builds batches from a weighted mixture of sources; ``batch(step)`` is a pure function of (seed, rank, step).

    Args:
        config: the training config.
        real: train splits of the real sources, by source name.
    """

    def __init__(self, config: TrainConfig, real: dict[str, SeriesSet], rank: int = 0) -> None:
        self.config = config
        self.rank = rank
        self.sources = config.data.sources
        w = np.array([s.weight for s in self.sources], dtype=np.float64)
        self.source_weights = w / w.sum()
        self.pickers = {
            s.name: FrequencyBalancedPicker(real[s.name], s.freq_weights) for s in self.sources if s.type in REAL_SOURCE_TYPES
        }
        self.all_real = list(self.pickers.values())

    def example(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        p, ctx = cfg.model.patch_size, cfg.model.context_length
        d = cfg.data
        context_values = ctx
        if rng.random() < d.short_window_prob:
            context_values = int(rng.integers(d.min_context_values, ctx + 1))
        length = context_values + p
        source = self.sources[rng.choice(len(self.sources), p=self.source_weights)]
        if source.type == "kernel_synth":
            window = kernel_synth(rng, length)
        elif source.type == "calendar_synth":
            window = calendar_synth(rng, length)
        elif source.type == "level_shifts":
            window = level_shifts(rng, length)
        elif source.type == "tsmixup":
            k = int(rng.integers(1, source.max_components + 1))
            pieces = [
                left_pad(random_window(rng, self.all_real[rng.integers(len(self.all_real))].pick(rng), length, d.min_context_values, p), length)
                for _ in range(k)
            ]
            window = tsmixup(rng, pieces, source.dirichlet_alpha)
        else:
            window = random_window(rng, self.pickers[source.name].pick(rng), length, d.min_context_values, p)
        window = left_pad(augment(rng, window, d.augment), ctx + p)
        inputs = mask_patches(rng, window[:ctx], d.cpm, p, d.min_context_values)
        return inputs, window[p:]

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """inputs (batch, context_length) and targets (batch, context_length), float32 with NaN = missing."""
        rng = np.random.default_rng([self.config.seed, self.rank, step])
        pairs = [self.example(rng) for _ in range(self.config.data.batch_size)]
        inputs = torch.from_numpy(np.stack([a for a, _ in pairs]))
        targets = torch.from_numpy(np.stack([b for _, b in pairs]))
        return {"inputs": inputs, "targets": targets, "step": torch.tensor(step)}


class StepBatches(torch.utils.data.IterableDataset):
    """Endless stream of ``sampler.batch(step)`` from ``start_step`` on.

    With several DataLoader workers, worker w makes steps start + w, start + w + n, ...; the DataLoader
    takes them round-robin, so the order is the same as with no workers.
    """

    def __init__(self, sampler: MixtureSampler, start_step: int = 0) -> None:
        self.sampler = sampler
        self.start_step = start_step

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        step = self.start_step + worker
        while True:
            yield self.sampler.batch(step)
            step += workers
