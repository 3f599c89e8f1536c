"""Embeddings: a fixed-length vector per series from a frozen forecaster, for classification and regression.

The recipe follows Auer et al. 2025, "Pre-trained Forecasting Models: Strong Zero-Shot Feature
Extractors for Time Series Classification" (arXiv 2510.26777):

1. The series is scaled and cut into patch tokens exactly as for a forecast (NaN = missing); it is
   left-padded with missing values to a whole number of patches only, so a series shorter than the
   context costs only its own tokens.
2. The output of every sLSTM block is averaged over the tokens that hold data (padding and all-missing
   patches are left out), giving one ``embed_dim`` vector per block.
3. Each block's vector is standardised over its own entries (zero mean, unit variance), so that no block
   dominates by scale, and the blocks are concatenated.
4. A series longer than the model's context is embedded window by window (windows of one context
   length, consecutive ones overlapping by ``window_overlap``, the last one ending at the last value);
   the window vectors are averaged, so every part of the series counts.
5. Augmentations from the paper, on by default: the same embedding of the first differences of the
   series (``diff``), and statistics of the raw values (``statistics``): mean, standard deviation,
   minimum and maximum of each of ``segments`` equal parts of the series, then log(1 + length). They
   restore the level, scale and length that the model's per-window scaling hides.
6. Our addition, multi-resolution: steps 1-5 (less the statistics) are repeated on the series stretched
   in time by each factor in ``resolutions`` (linear interpolation; factor 2 puts one new value between
   each two neighbours), so that a patch covers 1/2, 1/4 ... as many original values. A short series then
   spans more tokens, and the model sees its shape at a finer grain. On the aeon benchmark datasets this
   raised the mean accuracy from 0.89 to 0.91 (README, "Classification and regression").

One channel's vector is ``[for each resolution: blocks of the series | blocks of its differences]`` then
``[statistics]`` (``embedding_size`` long); a multivariate case concatenates its channels' vectors in
channel order.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .inputs import power_of_two_scale, to_series_list
from .scaling import fit_scale, patch_tokens

if TYPE_CHECKING:
    from .model import TiRexModel

STATISTICS = ("mean", "std", "min", "max")  # per segment, in this order
RECIPE_VERSION = 1  # part of the disk-cache key: bump when the vectors change


@dataclass(frozen=True)
class EmbeddingOptions:
    """What goes into an embedding.

    Attributes:
        diff: append the embedding of the first differences.
        statistics: append per-segment statistics of the raw values and the log length.
        segments: number of equal segments for the statistics.
        window_overlap: overlap of consecutive windows of a series longer than the context, in [0, 1).
        resolutions: time-stretch factors (positive integers) at which the series is embedded; (1,) = as is.
    """

    diff: bool = True
    statistics: bool = True
    segments: int = 8
    window_overlap: float = 0.5
    resolutions: tuple[int, ...] = (1, 2, 4)

    def __post_init__(self) -> None:
        resolutions = tuple(self.resolutions) if isinstance(self.resolutions, (list, tuple)) else (self.resolutions,)
        if not resolutions or any(isinstance(f, bool) or not isinstance(f, numbers.Integral) or f <= 0
                                  for f in resolutions):
            raise ValueError(f"resolutions must be positive integers (time-stretch factors), got {self.resolutions!r}")
        object.__setattr__(self, "resolutions", tuple(int(f) for f in resolutions))
        if isinstance(self.segments, bool) or not isinstance(self.segments, numbers.Integral) or self.segments <= 0:
            raise ValueError(f"segments must be a positive integer, got {self.segments!r}")
        if not isinstance(self.window_overlap, numbers.Real) or not 0.0 <= self.window_overlap < 1.0:
            raise ValueError(f"window_overlap must be in [0, 1), got {self.window_overlap!r}")


def embedding_size(model: "TiRexModel", options: EmbeddingOptions = EmbeddingOptions()) -> int:
    """Length of one channel's vector."""
    size = model.config.num_blocks * model.config.embed_dim * (2 if options.diff else 1) * len(options.resolutions)
    return size + (len(STATISTICS) * options.segments + 1 if options.statistics else 0)


# -- the model part ---------------------------------------------------------------------------------
def window_starts(length: int, window: int, overlap: float) -> list[int]:
    """Starts of the windows that cover ``length`` values: one if the series fits, else a stride of
    ``window * (1 - overlap)`` with the last window ending at the last value.

    >>> window_starts(1000, 512, 0.5)
    [0, 256, 488]
    """
    if length <= window:
        return [0]
    stride = max(1, int(round(window * (1.0 - overlap))))
    return list(range(0, length - window, stride)) + [length - window]


def block_means(model: "TiRexModel", windows: list[torch.Tensor], batch_size: int = 256) -> torch.Tensor:
    """Each block's output averaged over the data-holding tokens of each window: (windows, blocks, embed).

    Windows are batched (at most ``batch_size`` per forward, which bounds the memory of the blocks'
    outputs) with others of the same token count, so a window's result never depends on which other
    windows are embedded with it.
    """
    cfg = model.config
    p = cfg.patch_size
    device = next(model.parameters()).device
    out = torch.empty(len(windows), cfg.num_blocks, cfg.embed_dim)
    token_counts = [max(1, math.ceil(w.numel() / p)) for w in windows]
    groups = [[i for i, t in enumerate(token_counts) if t == count] for count in sorted(set(token_counts))]
    for rows in (group[k:k + batch_size] for group in groups for k in range(0, len(group), batch_size)):
        count = token_counts[rows[0]]
        x = torch.full((len(rows), count * p), float("nan"), dtype=torch.float32)
        for j, i in enumerate(rows):
            w = windows[i]
            x[j, x.shape[1] - w.numel():] = (w / power_of_two_scale(w)).float()
        loc, scale = fit_scale(x)
        tokens = patch_tokens((x - loc) / scale, p).to(device)  # (rows, tokens, 2 * patch)
        with torch.no_grad():
            hidden = model(tokens, return_hidden=True)  # blocks x (rows, tokens, embed)
        holds_data = tokens[..., p:].sum(-1) > 0  # (rows, tokens)
        holds_data[holds_data.sum(1) == 0] = True  # an all-missing window: average every token
        weight = (holds_data.float() / holds_data.sum(1, keepdim=True)).unsqueeze(-1)
        out[rows] = torch.stack([(h * weight).sum(1) for h in hidden], dim=1).cpu()
    return out


def standardise_blocks(means: torch.Tensor) -> torch.Tensor:
    """(..., blocks, embed): each block's vector to zero mean and unit variance over its entries."""
    centred = means - means.mean(-1, keepdim=True)
    return centred / (centred.pow(2).mean(-1, keepdim=True).sqrt() + 1e-6)


def model_embedding(model: "TiRexModel", series: list[torch.Tensor], window_overlap: float = 0.5,
                    batch_size: int = 256) -> torch.Tensor:
    """(n, blocks * embed): standardised block means of each series, averaged over its windows."""
    context = model.config.context_length
    windows, owner = [], []
    for i, s in enumerate(series):
        for start in window_starts(s.numel(), context, window_overlap):
            windows.append(s[start:start + context])
            owner.append(i)
    means = standardise_blocks(block_means(model, windows, batch_size))
    owner_t = torch.tensor(owner)
    total = torch.zeros(len(series), *means.shape[1:]).index_add_(0, owner_t, means)
    counts = torch.bincount(owner_t, minlength=len(series)).view(-1, 1, 1)
    return (total / counts).flatten(1)


def stretch(series: torch.Tensor, factor: int) -> torch.Tensor:
    """The series stretched in time by an integer ``factor``: the original values are kept and
    ``factor - 1`` linearly interpolated ones are put between each two neighbours (NaN next to a missing one).

    >>> stretch(torch.tensor([0.0, 1.0, 3.0]), 2)
    tensor([0.0000, 0.5000, 1.0000, 2.0000, 3.0000])
    """
    n = series.numel()
    if factor == 1 or n < 2:
        return series
    position = torch.arange((n - 1) * factor + 1, dtype=torch.float64) / factor
    low = position.floor().long().clamp(max=n - 2)
    frac = (position - low).to(series.dtype)
    a, b = series[low], series[low + 1]
    out = a + (b - a) * frac
    return torch.where(frac == 0, a, torch.where(frac == 1, b, out))


# -- the statistics --------------------------------------------------------------------------------
def segment_statistics(series: list[torch.Tensor], segments: int) -> torch.Tensor:
    """(n, 4 * segments + 1): NaN-aware mean, std, min and max of each of ``segments`` equal parts
    (segment after segment), then log(1 + length). A part without observed values gets zeros; a series
    shorter than ``segments`` repeats its values across the parts."""
    out = np.zeros((len(series), len(STATISTICS) * segments + 1))
    for i, s in enumerate(series):
        values = s.double().numpy()
        bounds = np.linspace(0, values.size, segments + 1)
        for k in range(segments):
            lo = min(int(bounds[k]), values.size - 1)
            part = values[lo:max(int(round(bounds[k + 1])), lo + 1)]
            part = part[~np.isnan(part)]
            if part.size:
                out[i, 4 * k:4 * k + 4] = part.mean(), part.std(), part.min(), part.max()
        out[i, -1] = math.log1p(values.size)
    return torch.from_numpy(out).float()


# -- series and collections -------------------------------------------------------------------------
def embed_series(
    model: "TiRexModel",
    series: list[torch.Tensor],
    options: EmbeddingOptions = EmbeddingOptions(),
    batch_size: int = 256,
    progress: bool = False,
) -> torch.Tensor:
    """Core on cleaned 1-D series (``to_series_list``'s output): (n, ``embedding_size``) float32."""
    parts = []
    starts = range(0, len(series), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="embed", unit="batch")
    for start in starts:
        chunk = series[start:start + batch_size]
        pieces = []
        for factor in options.resolutions:
            stretched = [stretch(s, factor) for s in chunk]
            pieces.append(model_embedding(model, stretched, options.window_overlap, batch_size))
            if options.diff:
                diffs = [s[1:] - s[:-1] if s.numel() > 1 else torch.full((1,), float("nan"), dtype=s.dtype)
                         for s in stretched]
                pieces.append(model_embedding(model, diffs, options.window_overlap, batch_size))
        if options.statistics:
            pieces.append(segment_statistics(chunk, options.segments))
        parts.append(torch.cat(pieces, dim=1))
    return torch.cat(parts)


def embed_collection(
    model: "TiRexModel",
    cases: list[np.ndarray],
    options: EmbeddingOptions = EmbeddingOptions(),
    batch_size: int = 256,
    progress: bool = False,
    cache_dir=None,
) -> np.ndarray:
    """Cases from ``to_collection`` (each (channels, time)) -> (n_cases, channels * embedding_size) float32.

    With ``cache_dir`` the vectors of series seen before come from the on-disk cache
    (``tirex.embedding_cache``) and new ones are added to it.
    """
    series = [row for case in cases for row in case]
    compute = lambda todo: embed_series(model, [torch.from_numpy(s) for s in todo], options, batch_size,  # noqa: E731
                                        progress).numpy()
    if cache_dir is None:
        vectors = compute(series)
    else:
        from .embedding_cache import cached_embeddings

        vectors = cached_embeddings(cache_dir, model, options, series, compute)
    return vectors.reshape(len(cases), -1)


def to_collection(X: Any, what: str = "X", allow_inf: bool = True, allow_empty_cases: bool = True) -> list[np.ndarray]:
    """A collection in aeon's conventions -> a list of float64 (n_channels, n_timepoints_i) arrays.

    Accepts a 3-D array or tensor (n_cases, n_channels, n_timepoints), a 2-D one (n_cases, n_timepoints:
    univariate), or a list of cases, each a 2-D (n_channels, n_timepoints_i) or 1-D (one channel) array.
    Values go through ``tirex.inputs.to_series_list`` (numbers only, no empty series; NaN = missing).
    Every case needs the same number of channels. ``allow_inf=False`` rejects inf instead of treating it as
    missing; ``allow_empty_cases=False`` rejects a case without a single observed value.
    """
    if (type(X).__module__ or "").startswith("scipy.sparse"):
        raise TypeError(f"{what} is a sparse matrix; sparse input is not supported, pass a dense array (X.toarray())")
    if isinstance(X, (str, bytes, dict)):
        raise TypeError(f"{what} of type {type(X).__name__} is not a collection; pass a 2-D or 3-D array or a list of cases")
    if isinstance(X, (list, tuple)):
        items = list(X)
        if items and all(isinstance(v, numbers.Number) for v in items):
            raise ValueError(f"{what} is a flat list of numbers (one series); a collection is a list of cases, "
                             "e.g. [series] for a single case")
    else:
        if hasattr(X, "to_numpy") and hasattr(X, "columns"):  # a wide DataFrame: one row per case
            X = X.to_numpy()
        arr = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
        if arr.dtype == object and arr.ndim == 1:
            items = list(arr)  # a ragged array of cases
        elif arr.ndim == 3:
            items = list(arr)
        elif arr.ndim == 2:
            items = [row[None] for row in arr]
        else:
            hint = "; Reshape your data: X[None] for a single univariate case" if arr.ndim == 1 else ""
            raise ValueError(
                f"{what} must be a 3-D (n_cases, n_channels, n_timepoints) or 2-D (n_cases, n_timepoints) array, "
                f"or a list of (n_channels, n_timepoints) arrays; got a {arr.ndim}-D array of shape {arr.shape}{hint}"
            )
    if not items:
        raise ValueError(f"{what} is an empty collection; pass at least one case")
    cases = []
    for i, item in enumerate(items):
        case = _to_case(item, i, what, allow_inf)
        if cases and case.shape[0] != cases[0].shape[0]:
            raise ValueError(f"{what} case {i} has {case.shape[0]} channel(s) but case 0 has {cases[0].shape[0]}; "
                             "every case needs the same channels")
        if not allow_empty_cases and np.isnan(case).all():
            raise ValueError(f"{what} case {i} has no observed value (all NaN); drop it or fill it in")
        cases.append(case)
    return cases


def _to_case(item: Any, index: int, what: str, allow_inf: bool) -> np.ndarray:
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().numpy()
    try:
        arr = np.asarray(item)
    except ValueError:  # channels of different lengths
        raise ValueError(f"{what} case {index}: its channels differ in length; within a case all channels "
                         "need the same number of time points") from None
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{what} case {index} must be a 2-D (n_channels, n_timepoints) array with at least one "
                         f"channel, or a 1-D series; got shape {arr.shape}")
    if not allow_inf and arr.dtype.kind == "f" and np.isinf(arr).any():
        channel = int(np.argwhere(np.isinf(arr))[0, 0])
        raise ValueError(f"{what} case {index}, channel {channel} contains inf; use NaN for missing values")
    try:
        rows = to_series_list(list(arr))
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{what} case {index}: {exc} (series = channel)") from None
    return torch.stack(rows).numpy()


# -- the public entry point (TiRexModel.embed) ---------------------------------------------------------
def embed(
    model: "TiRexModel",
    data: Any,
    diff: bool = True,
    statistics: bool = True,
    segments: int = 8,
    window_overlap: float = 0.5,
    resolutions=(1, 2, 4),
    batch_size: int = 256,
    per_channel: bool = False,
    output_type: str | None = None,
    progress: bool = False,
    **frame_kwargs,
):
    """Embed every series (or case) in ``data``; see ``TiRexModel.embed``."""
    from .forecast import _is_dataframe, _is_gluonts_dataset, _is_pandas_series

    options = EmbeddingOptions(diff=bool(diff), statistics=bool(statistics), segments=segments,
                               window_overlap=window_overlap, resolutions=resolutions)
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    run = dict(options=options, batch_size=int(batch_size), progress=progress)
    if _is_dataframe(data):
        return _embed_dataframe(model, data, run, **frame_kwargs)
    if frame_kwargs:
        raise TypeError(f"unexpected keyword arguments {sorted(frame_kwargs)}")
    if _is_pandas_series(data):
        return embed_series(model, to_series_list([data.to_numpy()]), **run)[0].numpy()
    if _is_gluonts_dataset(data):
        cases = to_collection([np.asarray(entry["target"], dtype=np.float64) for entry in data], "dataset")
        return _shaped(embed_collection(model, cases, **run), cases, per_channel)
    if isinstance(data, (str, bytes, dict)):
        raise TypeError(f"data of type {type(data).__name__} is not supported; see TiRexModel.embed")
    if _is_multivariate(data):
        cases = to_collection(data, "data")
        vectors = _shaped(embed_collection(model, cases, **run), cases, per_channel)
    else:
        vectors = embed_series(model, to_series_list(data), **run).numpy()
    if output_type is None:
        output_type = "numpy" if isinstance(data, np.ndarray) else "torch"
    if output_type == "numpy":
        return vectors
    if output_type == "torch":
        return torch.from_numpy(vectors)
    raise ValueError(f"output_type must be 'torch' or 'numpy', got {output_type!r}")


def _is_multivariate(data: Any) -> bool:
    """A 3-D array/tensor, or a list whose items are 2-D: a collection of multivariate cases."""
    if isinstance(data, (np.ndarray, torch.Tensor)):
        return data.ndim == 3
    if isinstance(data, (list, tuple)):
        return any(getattr(item, "ndim", None) == 2 or (isinstance(item, (list, tuple)) and item
                                                         and isinstance(item[0], (list, tuple, np.ndarray)))
                   for item in data)
    return False


def _shaped(vectors: np.ndarray, cases: list[np.ndarray], per_channel: bool) -> np.ndarray:
    return vectors.reshape(len(cases), cases[0].shape[0], -1) if per_channel else vectors


def _embed_dataframe(model, df, run: dict, id_column=None, timestamp_column=None, target_column=None):
    """Long DataFrame (id, timestamp, target) -> DataFrame indexed by the series ids, one column per entry."""
    import pandas as pd

    from .frames import long_series

    # the same validation as forecast's tables (tirex.io.validate_table): columns, ids, timestamps, gaps
    data = long_series(df, 1, id_column, timestamp_column, target_column, layout="long")
    vectors = embed_series(model, data.series, **run).numpy()
    return pd.DataFrame(vectors, index=pd.Index(data.ids, name=data.id_column or "item_id"))
