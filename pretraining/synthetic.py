"""Synthetic series and augmentations, all driven by an explicit ``numpy.random.Generator``.

KernelSynth style (Ansari et al., Chronos, 2024): draw up to ``max_kernels`` kernels from a bank
(linear, RBF, rational quadratic, periodic with typical periods, white noise, constant), combine
them with random + and *, and sample a function. Exact GP sampling needs a Cholesky factor per
series; we sample each kernel's function with random Fourier features instead (O(length * features)),
which has the kernel's covariance for stationary kernels. Sums of independent draws have the sum
kernel; products of draws have the product kernel as covariance (not Gaussian, which is fine here).

Level shifts: piecewise-constant series (a constant is the case with no jump), optionally with small
noise, a linear drift or intermittent zeros; these teach flat forecasts after flat contexts, which the
smooth kernel draws rarely show.

TSMixup: a convex combination (Dirichlet weights) of 1 to k real series, each scaled by its mean
absolute value. Augmentations: amplitude modulation, censoring, spikes, missing stretches.
"""

from __future__ import annotations

import numpy as np

from .config import AugmentConfig

PERIODS = (4, 7, 12, 24, 48, 52, 96, 168, 288, 336, 365, 672)


def _rff(rng: np.random.Generator, t: np.ndarray, omega: np.ndarray) -> np.ndarray:
    """Random Fourier features: sum_d w_d cos(omega_d t + b_d), unit variance."""
    phase = rng.uniform(0, 2 * np.pi, size=len(omega))
    weights = rng.standard_normal(len(omega)) * np.sqrt(2.0 / len(omega))
    return np.cos(np.outer(t, omega) + phase) @ weights


def sample_kernel_function(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """One function drawn for one random kernel of the bank; ``t`` in [0, 1]."""
    n = len(t)
    kind = rng.choice(["linear", "rbf", "rq", "periodic", "periodic", "white", "constant"])
    if kind == "linear":
        return rng.standard_normal() * (t - rng.uniform(0, 1))
    if kind == "rbf":
        length = rng.choice([0.02, 0.05, 0.1, 0.3, 1.0])
        return _rff(rng, t, rng.standard_normal(64) / length)
    if kind == "rq":  # scale mixture of RBFs: gamma-distributed inverse squared length scales
        alpha = rng.choice([0.1, 1.0, 10.0])
        length = rng.choice([0.05, 0.1, 0.3, 1.0])
        inv_l = np.sqrt(rng.gamma(alpha, 1.0 / alpha, size=64)) / length
        return _rff(rng, t, rng.standard_normal(64) * inv_l)
    if kind == "periodic":  # exp-sine-squared: harmonics of the period with decaying weights
        period = rng.choice(PERIODS) / n  # in units of t
        smooth = rng.choice([0.5, 1.0, 2.0])
        k = np.arange(1, 9)
        amp = np.exp(-k / smooth) * rng.standard_normal((2, 8))
        arg = 2 * np.pi * np.outer(t, k) / period
        return np.cos(arg) @ amp[0] + np.sin(arg) @ amp[1]
    if kind == "white":
        return rng.uniform(0.05, 0.5) * rng.standard_normal(n)
    return np.full(n, rng.standard_normal())


def kernel_synth(rng: np.random.Generator, length: int, max_kernels: int = 5) -> np.ndarray:
    """A KernelSynth-style series of ``length`` values (float32).

    Example:
        >>> kernel_synth(np.random.default_rng(0), 512).shape
        (512,)
    """
    t = np.linspace(0, 1, length)
    y = sample_kernel_function(rng, t)
    for _ in range(rng.integers(0, max_kernels)):
        f = sample_kernel_function(rng, t)
        y = y + f if rng.random() < 0.5 else y * f
    return y.astype(np.float32)


def level_shifts(rng: np.random.Generator, length: int, max_shifts: int = 4) -> np.ndarray:
    """A piecewise-constant series of ``length`` values (float32) with 0 to ``max_shifts`` jumps.

    The level is drawn around a random offset; with some probability the series gets Gaussian noise,
    a small linear drift, or is multiplied by a Bernoulli mask (intermittent demand with a constant size).

    Example:
        >>> y = level_shifts(np.random.default_rng(0), 256)
        >>> y.shape, y.dtype
        ((256,), dtype('float32'))
    """
    offset = rng.normal(0.0, 5.0)
    y = np.full(length, offset + rng.standard_normal())
    for start in np.sort(rng.integers(1, length, size=rng.integers(0, max_shifts + 1))):
        y[start:] = offset + rng.standard_normal()
    if rng.random() < 0.3:
        y = y + rng.normal(0.0, 1.0) * np.linspace(0.0, 1.0, length)
    if rng.random() < 0.4:
        y = y + rng.uniform(0.01, 0.3) * rng.standard_normal(length)
    if rng.random() < 0.2:
        y = np.abs(y) * (rng.random(length) < rng.uniform(0.1, 0.9))
    return y.astype(np.float32)


def tsmixup(rng: np.random.Generator, pieces: list[np.ndarray], alpha: float = 1.5) -> np.ndarray:
    """Dirichlet-weighted mix of equal-length pieces, each divided by its mean absolute value."""
    weights = rng.dirichlet(np.full(len(pieces), alpha))
    out = np.zeros(len(pieces[0]), dtype=np.float64)
    for w, p in zip(weights, pieces):
        observed = np.abs(p[~np.isnan(p)])
        scale = observed.mean() if observed.size else 1.0
        out += w * p / (scale if scale > 0 else 1.0)
    return out.astype(np.float32)


def augment(rng: np.random.Generator, x: np.ndarray, cfg: AugmentConfig) -> np.ndarray:
    """Apply each augmentation with its probability to a copy of ``x`` (1-D, NaN = missing)."""
    x = x.astype(np.float32, copy=True)
    n = len(x)
    if n < 4:
        return x
    observed = x[~np.isnan(x)]
    if rng.random() < cfg.amplitude_prob:  # smooth positive multiplicative trend
        t = np.linspace(0, 1, n)
        x *= (1 + rng.uniform(-0.5, 0.5) * t + rng.uniform(0, 0.3) * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t)).clip(0.1)
    if rng.random() < cfg.censor_prob and observed.size:  # clip at a quantile (e.g. demand capped at stock)
        q = np.quantile(observed, rng.uniform(0.05, 0.3) if rng.random() < 0.5 else rng.uniform(0.7, 0.95))
        x = np.maximum(x, q) if q <= np.median(observed) else np.minimum(x, q)
    if rng.random() < cfg.spike_prob and observed.size:
        k = rng.integers(1, 4)
        idx = rng.integers(0, n, size=k)
        spread = np.nanstd(observed) or 1.0
        x[idx] += rng.choice([-1, 1], size=k) * rng.uniform(3, 8, size=k) * spread
    if rng.random() < cfg.missing_prob:
        start = rng.integers(0, n)
        x[start : start + rng.integers(1, max(2, n // 8))] = np.nan
    return x


# ---------------------------------------------------------------------------------------------------------
# Calendar series: what real high-frequency data has and smooth kernel draws rarely show. A resolution
# is drawn first; its calendar gives the seasonal periods in steps (hourly data: a day of 24 steps and a
# week of 168). Each series mixes
#   - a daily (or base) profile with sharp, multi-harmonic shapes, and a day-of-week effect on top of it
#     (weekends differ), so that several seasonalities act at once;
#   - a level with a trend: linear, piecewise linear, a random walk, or none;
#   - noise: Gaussian, heavy-tailed, AR(1), or proportional to the level;
#   - regime changes: at a random point the level, the seasonal amplitude or the profile changes;
#   - optionally counts (Poisson around a positive intensity; a small intensity gives intermittent
#     series) or a floor at zero (solar-like profiles that are zero at night).

# resolution -> (steps per base cycle, steps per long cycle or None, steps per day for the day-of-week effect)
CALENDAR = {
    "min": (60, 1440, 1440),  # hour within the day, day
    "5min": (288, 2016, 288),  # day, week
    "10min": (144, 1008, 144),
    "15min": (96, 672, 96),
    "30min": (48, 336, 48),
    "H": (24, 168, 24),
    "D": (7, 365.25, 1),  # week, year
    "B": (5, 261, 1),  # business days: week, year
    "W": (52.18, None, None),
    "M": (12, None, None),
    "Q": (4, None, None),
}
CALENDAR_WEIGHTS = {"min": 0.08, "5min": 0.1, "10min": 0.06, "15min": 0.08, "30min": 0.1, "H": 0.22, "D": 0.16, "B": 0.06,
                    "W": 0.06, "M": 0.05, "Q": 0.03}


def _profile(rng: np.random.Generator, phase: np.ndarray, sharp: bool) -> np.ndarray:
    """A zero-mean periodic shape of ``phase`` in [0, 1): a few harmonics, or many for a peaked profile."""
    k = np.arange(1, (rng.integers(4, 12) if sharp else rng.integers(1, 4)) + 1)
    amp = rng.standard_normal((2, len(k))) / k ** rng.uniform(0.5, 1.5)
    arg = 2 * np.pi * np.outer(phase, k)
    y = np.cos(arg) @ amp[0] + np.sin(arg) @ amp[1]
    return y / (y.std() + 1e-9)


def _trend(rng: np.random.Generator, n: int) -> np.ndarray:
    kind = rng.choice(["none", "linear", "piecewise", "walk", "walk"])
    t = np.linspace(0, 1, n)
    if kind == "linear":
        return rng.normal(0, 1.5) * t
    if kind == "piecewise":
        knots = np.sort(rng.uniform(0, 1, rng.integers(1, 4)))
        slopes = rng.normal(0, 2.0, len(knots) + 1)
        return np.cumsum(np.diff(np.concatenate([[0], t])) * slopes[np.searchsorted(knots, t)])
    if kind == "walk":
        return np.cumsum(rng.normal(0, rng.uniform(0.005, 0.05), n))
    return np.zeros(n)


def _noise(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    kind = rng.choice(["gauss", "t", "ar"])
    if kind == "t":
        e = rng.standard_t(rng.uniform(2.5, 6), n)
    elif kind == "ar":
        phi, e = rng.uniform(0.3, 0.95), rng.standard_normal(n)
        for i in range(1, n):  # n is a few thousand: a plain loop is fast enough
            e[i] += phi * e[i - 1]
        e *= np.sqrt(1 - phi**2)
    else:
        e = rng.standard_normal(n)
    return scale * e


def calendar_synth(rng: np.random.Generator, length: int, resolution: str | None = None) -> np.ndarray:
    """A series of ``length`` values with calendar seasonalities at a random resolution (float32).

    Example:
        >>> y = calendar_synth(np.random.default_rng(0), 2064, resolution="H")
        >>> y.shape, bool(np.isfinite(y).all())
        ((2064,), True)
    """
    if resolution is None:
        names = list(CALENDAR_WEIGHTS)
        w = np.array([CALENDAR_WEIGHTS[k] for k in names])
        resolution = names[rng.choice(len(names), p=w / w.sum())]
    base, long, day = CALENDAR[resolution]
    n = length
    t = np.arange(n) + rng.integers(0, 100_000)  # a random position in the calendar
    sharp = rng.random() < 0.6
    season = _profile(rng, (t % base) / base, sharp)
    if long is not None and rng.random() < 0.8:
        long_part = _profile(rng, (t % long) / long, False)
        if day is not None and day > 1 and rng.random() < 0.6:  # day-of-week levels (weekends differ)
            dow = rng.normal(0, 0.3, 7)
            if rng.random() < 0.6:
                dow[5:] += rng.uniform(-1.5, -0.3)
            long_part = dow[(t // day) % 7] - dow.mean()
        weight = rng.uniform(0.2, 1.0)
        if rng.random() < 0.5:  # the long cycle modulates the base one
            season = season * (1 + weight * 0.5 * long_part)
        else:
            season = season + weight * long_part
    amplitude = np.full(n, rng.uniform(0.3, 3.0))
    level = _trend(rng, n) * rng.uniform(0.5, 4.0)
    if rng.random() < 0.25:  # regime change: level, amplitude or profile switch at a random point
        at = int(rng.integers(n // 10, n - n // 10)) if n >= 20 else n // 2
        what = rng.choice(["level", "amplitude", "profile"])
        if what == "level":
            level[at:] += rng.normal(0, 3.0)
        elif what == "amplitude":
            amplitude[at:] *= rng.uniform(0.2, 3.0)
        else:
            season[at:] = _profile(rng, (t[at:] % base) / base, sharp)
    y = level + amplitude * season
    noise_scale = rng.uniform(0.02, 0.6) * amplitude.mean()
    if rng.random() < 0.3:  # noise that grows with the level
        y = y + _noise(rng, n, noise_scale) * (np.abs(y) / (np.abs(y).mean() + 1e-9))
    else:
        y = y + _noise(rng, n, noise_scale)
    r = rng.random()
    if r < 0.2:  # counts around a positive intensity; small intensities are intermittent
        intensity = np.exp((y - y.mean()) / (y.std() + 1e-9) * rng.uniform(0.2, 1.0))
        mean_count = np.exp(rng.uniform(np.log(0.05), np.log(200)))
        y = rng.poisson(intensity / intensity.mean() * mean_count).astype(np.float64)
    elif r < 0.3:  # a floor at zero (e.g. solar power at night)
        y = np.maximum(y - np.quantile(y, rng.uniform(0.1, 0.5)), 0.0)
    else:
        y = y + rng.normal(0, 5.0) * (amplitude.mean() + 1.0)  # an offset: level relative to the amplitude varies
    return y.astype(np.float32)
