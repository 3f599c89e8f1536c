"""Validation at the boundary: whatever a user passes becomes validated series here, once.

Every entry point goes through this layer: ``TiRexModel.forecast`` / ``stream`` / ``finetune``, the
command line, and the server and batch paths. The forecasting core (``tirex.forecast.forecast_tensors``,
the model) only ever sees its output. The layer has two modules:

- ``tirex.validation`` (this one): settings and array-like data.
    - ``check_prediction_length``, ``check_quantile_levels``, ``check_positive_int``,
      ``check_max_masked_fraction``, ``check_output_type``, ``check_device``: one setting each.
    - ``to_series_list(context)``: a tensor, an array or a (ragged) list, also a JSON list with ``None``
      for missing values -> list of 1-D float64 tensors, NaN = missing.
    - ``check_update(values, batch)``: new observations for a ``Stream``.
- model inputs: ``check_tokens`` (what ``TiRexModel.forward`` takes) and ``check_float32_model`` (a
  model converted to another dtype), for code that calls the network directly.
- ``tirex.io``: tables (pandas DataFrames and the rows of CSV / Parquet files, long or wide):
  ``read_table``, ``to_long`` / ``validate_table`` (-> validated long frame on a regular time grid), with
  the time axis from ``tirex.timestamps`` (``parse_timestamps``, ``future_timestamps``).

Errors are ``ValueError`` or ``TypeError`` raised before any model work, with a message naming the
series or column and saying what to do. ``InputError`` (a ``ValueError``) is the table layer's error;
``InputTypeError`` is both an ``InputError`` and a ``TypeError`` (non-numeric data in a table).

Example:
    >>> to_series_list([[1.0, 2.0, None], np.arange(5)])     # two series, None = missing
    [tensor([1., 2., nan], dtype=torch.float64), tensor([0., 1., 2., 3., 4.], dtype=torch.float64)]
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

# torch is imported where a function needs it, not here: the torch-free runtime (``tirex.lite``) validates
# with this module too. A torch tensor can only be passed where torch is already imported (``_is_tensor``).

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep  # this package's folder


def _warn(message: str) -> None:
    """A ``UserWarning`` attributed to the first caller outside this package (the user's line, whichever entry
    point - forecast, stream, the torch-free runtime - led here)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


MAX_PREDICTION_LENGTH = 100_000  # steps per call; see check_prediction_length


class InputError(ValueError):
    """A problem with a user's data, phrased so that the user can fix it (a file, a frame, a column)."""


class InputTypeError(InputError, TypeError):
    """Data of the wrong kind (text where numbers are needed); both a ``ValueError`` and a ``TypeError``."""


# ---------------------------------------------------------------------------------------------- messages
def show_value(value: Any) -> str:
    """repr of a value for a message, numpy scalars as plain Python values (5, not np.int64(5))."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def option_hint(name: str) -> str:
    """How to pass a setting, on the command line and in Python: ``--id-column (or id_column= in Python)``."""
    return f"--{name.replace('_', '-')} (or {name}= in Python)"


# ---------------------------------------------------------------------------------------------- settings
def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(value: Any, name: str) -> int:
    """``value`` as an int if it is a positive integer (not a bool, float or string), else raise.

    >>> check_positive_int(np.int64(3), "batch_size")
    3
    """
    if not _is_int(value):
        hint = f"; convert it first, e.g. int({value!r})" if isinstance(value, str) else ""
        raise TypeError(f"{name} must be a positive integer, got {value!r} ({type(value).__name__}){hint}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def check_prediction_length(prediction_length: Any, maximum: int = MAX_PREDICTION_LENGTH) -> int:
    """The horizon as an int: a positive integer of at most ``maximum`` (100,000) steps.

    The rollout's cost grows linearly with the horizon (one pass per patch); the cap keeps a typo
    such as ``10**7`` from running for hours and filling memory. Forecast at a coarser frequency
    to look further ahead.
    """
    n = check_positive_int(prediction_length, "prediction_length")
    if n > maximum:
        raise ValueError(
            f"prediction_length {n:,} is above the maximum of {maximum:,} steps per call; forecasts that far "
            "ahead are rolled out from the model's own predictions for thousands of passes. Forecast fewer "
            "steps, or resample the series to a coarser frequency first"
        )
    return n


def check_quantile_levels(levels: Any) -> tuple[float, ...]:
    """Requested quantile levels as a tuple of floats: numbers strictly between 0 and 1, no duplicates.

    Strings are refused like strings for ``prediction_length`` (``TypeError``). The order is kept:
    the output has one column per level in this order.

    >>> check_quantile_levels(np.array([0.1, 0.5]))
    (0.1, 0.5)
    """
    if isinstance(levels, (str, bytes)) or not hasattr(levels, "__iter__"):
        raise TypeError(f"quantile_levels must be a sequence of numbers in (0, 1), got {levels!r}")
    values = levels.tolist() if isinstance(levels, np.ndarray) or _is_tensor(levels) else list(levels)
    for q in values:
        if isinstance(q, bool) or not isinstance(q, numbers.Real):
            raise TypeError(
                f"quantile_levels must be numbers in (0, 1), got {q!r} ({type(q).__name__}) in {levels!r}"
            )
    out = tuple(float(q) for q in values)
    if not out:
        raise ValueError("quantile_levels must not be empty")
    bad = [q for q in out if not (0.0 < q < 1.0)]
    if bad:
        raise ValueError(f"quantile levels must lie strictly between 0 and 1, got {bad}")
    if len(set(out)) != len(out):
        raise ValueError(f"quantile_levels has duplicates: {list(out)}")
    return out


def check_max_masked_fraction(value: Any) -> float | None:
    """``None`` (the reference's rollout) or a number in (0, 1]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"max_masked_fraction must be a number in (0, 1] or None, got {value!r}")
    if not (0.0 < float(value) <= 1.0):
        raise ValueError(f"max_masked_fraction must be in (0, 1] or None, got {value!r}")
    return float(value)


def check_output_type(value: Any) -> str | None:
    """``None`` (numpy for numpy input, else torch), ``"torch"`` or ``"numpy"``."""
    if value not in (None, "torch", "numpy"):
        raise ValueError(f"output_type must be 'torch' or 'numpy', got {value!r}")
    return value


def check_device(device: Any) -> torch.device | None:
    """A torch device that exists on this machine, or ``None``; clear errors for the rest.

    ``"cuda"`` on a CPU build of torch, or without a visible GPU, is a ``ValueError`` saying so
    (rather than the AssertionError torch raises deep inside ``.to()``).
    """
    import torch

    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:0'") from exc
    if dev.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise ValueError(
                f"device {device!r}: this torch {torch.__version__} is a CPU-only build; install a CUDA build of "
                "torch (README: Two commands) or use device='cpu'"
            )
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: torch sees no CUDA GPU on this machine; use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: Apple's MPS backend is not available here; use device='cpu'")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}: only 'cpu', 'cuda' and 'mps' devices are supported")
    return dev


def check_run(
    model: Any,
    prediction_length: Any,
    quantile_levels: Any = None,
    batch_size: Any = 256,
    rollout_steps: Any = 1,
    max_masked_fraction: Any = 0.5,
    progress: bool | None = None,
    keep_sign: bool = False,
) -> dict:
    """Validate the settings of a forecast of ``model`` (anything with a ``config``: ``TiRexModel``,
    ``tirex.lite.LiteModel``); returns the keyword arguments of ``tirex.rollout.forecast_batches``."""
    levels = quantile_levels if quantile_levels is not None else model.config.quantile_levels
    return dict(
        prediction_length=check_prediction_length(prediction_length),
        quantile_levels=check_quantile_levels(levels),
        batch_size=check_positive_int(batch_size, "batch_size"),
        rollout_steps=check_positive_int(rollout_steps, "rollout_steps"),
        max_masked_fraction=check_max_masked_fraction(max_masked_fraction),
        progress=None if progress is None else bool(progress),
        keep_sign=bool(keep_sign),
    )


# ------------------------------------------------------------------------------------------- array data
def _is_missing(value: Any) -> bool:
    return value is None or (type(value).__name__ in ("NAType", "NaTType"))


def _object_to_float(arr: np.ndarray, what: str) -> np.ndarray:
    """An object array of numbers and ``None`` (JSON ``null``) -> float64; anything else is a TypeError."""
    out = np.empty(arr.shape, dtype=np.float64)
    flat_in, flat_out = arr.reshape(-1), out.reshape(-1)
    for i, value in enumerate(flat_in):
        if _is_missing(value):
            flat_out[i] = np.nan
        elif isinstance(value, (numbers.Real, np.bool_)) and not isinstance(value, (str, bytes)):
            flat_out[i] = float(value)
        elif isinstance(value, numbers.Complex):
            raise TypeError(f"{what} holds a complex number ({value!r}); forecasting needs real numbers")
        else:
            kind = "text" if isinstance(value, (str, bytes)) else f"a {type(value).__name__}"
            raise TypeError(
                f"{what} is non-numeric: it holds {kind} ({value!r}) where numbers are needed; pass numbers, with NaN "
                "or None for missing values" + (" (convert numeric text first, e.g. with float())" if kind == "text" else "")
            )
    return out


def as_float_array(values: Any, what: str = "context") -> np.ndarray:
    """Numbers of any real dtype (tensor, array, list) -> a float64 numpy array of the same shape.

    Booleans and integers are cast; ``None`` in lists and object arrays means missing. Strings (even
    numeric ones), complex numbers, datetimes and other objects are a ``TypeError`` naming ``what``.
    """
    if _is_tensor(values):
        import torch

        if values.is_complex():
            raise TypeError(f"{what} is complex; forecasting needs real numbers")
        return values.detach().to("cpu", torch.float64).numpy()
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{what} is non-numeric: text ({values[:40]!r}); pass numbers")
    try:
        arr = np.asarray(values)
    except ValueError as exc:  # ragged nesting
        raise ValueError(f"{what} is not a regular array of numbers ({exc}); pass a list of 1-D series") from exc
    kind = arr.dtype.kind
    if kind in "biuf":
        with np.errstate(over="ignore"):  # float128 beyond float64 becomes inf, handled as missing later
            return arr.astype(np.float64, copy=False)
    if kind == "c":
        raise TypeError(f"{what} is complex (dtype {arr.dtype}); forecasting needs real numbers")
    if kind == "O":
        return _object_to_float(arr, what)
    if kind in "US":
        example = arr.reshape(-1)[0] if arr.size else ""
        raise TypeError(
            f"{what} is non-numeric: it holds text (dtype {arr.dtype}, e.g. {str(example)!r}); pass numbers "
            "(convert numeric text first, e.g. np.asarray(x, dtype=float))"
        )
    if kind in "mM":
        raise TypeError(f"{what} holds datetimes/timedeltas (dtype {arr.dtype}); pass the values, not the timestamps")
    raise TypeError(f"{what} has dtype {arr.dtype}, which is not numeric")


def _is_scalar(value: Any) -> bool:
    if _is_missing(value) or isinstance(value, (numbers.Number, np.generic)):
        return not isinstance(value, (str, bytes))
    return (isinstance(value, np.ndarray) or _is_tensor(value)) and value.ndim == 0


def _as_tensor(arr: np.ndarray) -> torch.Tensor:
    """``arr`` as a tensor that shares its memory where it can; a copy where it is not contiguous or read-only
    (pandas 3's copy-on-write hands those out, as does a memory-mapped file): torch cannot share those."""
    import torch

    arr = np.ascontiguousarray(arr)
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def _finite_series(arr: np.ndarray, index: int) -> np.ndarray:
    inf = np.isinf(arr)
    if inf.any():
        _warn(f"series {index} contains {int(inf.sum())} inf value(s); treating them as missing")
        arr = np.where(inf, np.nan, arr)
    return arr


def to_series_list(context: Any) -> list[torch.Tensor]:
    """Validate a context of array-like series; returns 1-D float64 tensors (NaN = missing): ``to_series_arrays``
    as tensors (sharing memory where they can)."""
    return [_as_tensor(arr) for arr in to_series_arrays(context)]


def to_series_arrays(context: Any) -> list[np.ndarray]:
    """Validate a context of array-like series; returns 1-D float64 numpy arrays (NaN = missing).

    Accepts a 1-D or 2-D tensor / array (rows are series), or a list / tuple of 1-D series of any
    lengths (arrays, tensors, lists with ``None`` for missing values, as JSON gives them). A flat list
    of numbers is one series. ``inf`` is treated as missing, with a ``UserWarning``. Raises
    ``ValueError`` for empty series, no series, and shapes other than 1-D / 2-D; ``TypeError`` for text,
    complex numbers, dicts and other non-numeric data.
    """
    if isinstance(context, dict):
        raise TypeError("context is a dict; pass a list of series (e.g. list(d.values())) or a pandas DataFrame")
    if isinstance(context, (str, bytes)):
        raise TypeError(f"context of type {type(context).__name__} is not supported; pass numbers (see TiRexModel.forecast)")
    if isinstance(context, (list, tuple)):
        if len(context) == 0:
            raise ValueError("context is an empty list; pass at least one series")
        scalars = [_is_scalar(v) for v in context]
        if all(scalars):
            items = [as_float_array(np.asarray(context, dtype=object), "series 0")]
        elif any(scalars):
            raise TypeError(
                "context mixes numbers and sequences; pass either one series (a flat list of numbers) or a list of series"
            )
        else:
            items = list(context)
    else:
        if not isinstance(context, np.ndarray) and not _is_tensor(context) and not hasattr(context, "__array__"):
            raise TypeError(
                f"context of type {type(context).__name__} is not supported; pass a tensor, an array, a list of series, "
                "a pandas Series or DataFrame, or a GluonTS dataset"
            )
        arr = as_float_array(context, "context")
        if arr.ndim == 0:
            raise ValueError("context is a single number; pass a 1-D series (the history) or a 2-D (series, time) array")
        if arr.ndim > 2:
            raise ValueError(
                f"context must be 1-D (one series) or 2-D (series, time), got {arr.ndim}-D with shape {arr.shape}; "
                "for multivariate data pass each variate as its own series"
            )
        if arr.ndim == 2 and arr.shape[0] == 0:
            raise ValueError(f"context has shape {arr.shape}: no series to forecast")
        if arr.ndim == 2 and arr.shape[1] == 1 and arr.shape[0] > 1:
            _warn(f"context has shape {arr.shape}: {arr.shape[0]} series of one value each (rows are series); "
                  "for one series pass a 1-D array or the transpose")
        items = [arr] if arr.ndim == 1 else list(arr)
    series = []
    for i, item in enumerate(items):
        arr = item if isinstance(item, np.ndarray) and item.dtype == np.float64 else as_float_array(item, f"series {i}")
        if arr.ndim != 1:
            raise ValueError(f"series {i} must be 1-D, got shape {arr.shape}")
        if arr.size == 0:
            raise ValueError(f"series {i} is empty; every series needs at least one value (NaN counts)")
        series.append(_finite_series(arr, i))
    return series


def check_update(values: Any, batch: int) -> torch.Tensor:
    """New observations for a stream of ``batch`` series -> (batch, n) float64, NaN = missing.

    Takes (batch, n) values, or for a single series (n,) values or one number.
    """
    arr = as_float_array(values, "update")
    if arr.ndim == 0 and batch == 1:
        arr = arr.reshape(1, 1)
    elif arr.ndim == 1 and batch == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[0] != batch:
        raise ValueError(
            f"update expects ({batch}, n) values (one row per series of the stream), got shape {tuple(arr.shape)}"
        )
    inf = np.isinf(arr)
    if inf.any():
        _warn(f"update contains {int(inf.sum())} inf value(s); treating them as missing")
        arr = np.where(inf, np.nan, arr)
    return _as_tensor(arr)


# ----------------------------------------------------------------------------------------- model inputs
def check_float32_model(model: torch.nn.Module) -> None:
    """TiRex computes in float32 (the checkpoint's and the reference's dtype): a model whose floating-point
    parameters were converted (``model.double()``, ``.half()``, ``.to(torch.bfloat16)``, a Lightning
    ``*-true`` precision other than 32) is a ``ValueError`` naming the first such parameter and the fix,
    instead of a dtype mismatch deep inside torch. Integer tensors (e.g. a quantised layer's) pass."""
    import torch

    # a walk over each module's own parameter dict: a third of model.parameters()' cost (it runs in every
    # forward that was not prepared, also a stream's one-patch updates)
    modules, converted = [model], False
    while modules and not converted:
        module = modules.pop()
        converted = any(p is not None and p.dtype != torch.float32 and p.is_floating_point()
                        for p in module._parameters.values())
        modules.extend(m for m in module._modules.values() if m is not None)
    if not converted:
        return
    name, param = next((n, p) for n, p in model.named_parameters()
                       if p.is_floating_point() and p.dtype != torch.float32)
    raise ValueError(
        f"TiRex computes in float32, but parameter {name!r} is {param.dtype} (was the model converted with "
        ".double(), .half() or .to(dtype)?); call model.float(). For bfloat16 matmuls use "
        "model.set_fast_mode(True); to train in reduced precision, a mixed precision (bf16-mixed)"
    )


def check_tokens(tokens: Any, patch_size: int, device: torch.device) -> torch.Tensor:
    """``TiRexModel.forward``'s tokens: a (batch, tokens, 2 * patch_size) real tensor of finite values on the
    model's device (``tirex.scaling.patch_tokens`` builds them), returned as float32 (other real dtypes
    are converted); anything else is a ``TypeError`` / ``ValueError`` saying what was expected."""
    import torch

    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens must be a torch.Tensor (from tirex.scaling.patch_tokens), got {type(tokens).__name__}")
    if tokens.is_complex() or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must hold real numbers, got dtype {tokens.dtype}")
    width = 2 * patch_size
    if tokens.dim() != 3 or tokens.shape[2] != width or tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(
            f"tokens must have shape (batch >= 1, tokens >= 1, {width}) (a patch of {patch_size} values and its "
            f"mask, from tirex.scaling.patch_tokens), got {tuple(tokens.shape)}"
        )
    if tokens.device != device:
        raise ValueError(f"tokens are on {tokens.device} but the model is on {device}; move one of them (.to())")
    if tokens.dtype != torch.float32:
        tokens = tokens.float()
    # one cheap sum first (its NaN / inf also come from huge finite values: then the exact check decides)
    if not math.isfinite(float(tokens.detach().sum())) and not bool(torch.isfinite(tokens).all()):
        raise ValueError(
            "tokens hold NaN or inf; missing values are a 0 with mask 0 (tirex.scaling.patch_tokens builds them so)"
        )
    return tokens


__all__ = [
    "MAX_PREDICTION_LENGTH",
    "InputError",
    "InputTypeError",
    "as_float_array",
    "check_device",
    "check_float32_model",
    "check_max_masked_fraction",
    "check_output_type",
    "check_positive_int",
    "check_prediction_length",
    "check_quantile_levels",
    "check_tokens",
    "check_update",
    "to_series_list",
]

