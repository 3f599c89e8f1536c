"""Frequency strings -> seasonal periods: the one place this fact lives in the harness.

GIFT-Eval uses GluonTS's ``get_seasonality`` for MASE; baselines use the same period as their season length.
"""

from __future__ import annotations

import re

# Base seasonal period per pandas frequency code (GluonTS ``get_seasonality``). Anything else -> 1.
BASE_SEASONALITY = {"S": 3600, "T": 1440, "MIN": 1440, "H": 24, "D": 1, "W": 1, "M": 12, "ME": 12, "MS": 12,
                    "B": 5, "Q": 4, "QE": 4, "QS": 4}

_FREQ_RE = re.compile(r"^\s*(\d*)\s*([A-Za-z]+)(?:-[A-Za-z]+)?\s*$")


def split_freq(freq: str) -> tuple[int, str]:
    """Split a pandas frequency string into (multiple, upper-case base code).

    >>> split_freq("5T")
    (5, 'T')
    >>> split_freq("W-WED")
    (1, 'W')
    """
    match = _FREQ_RE.match(str(freq))
    if match is None:
        raise ValueError(f"cannot parse frequency {freq!r}; expected a pandas frequency such as 'H', '5T', 'W-WED'")
    multiple = int(match.group(1)) if match.group(1) else 1
    if multiple < 1:
        raise ValueError(f"frequency {freq!r} has a non-positive multiple")
    return multiple, match.group(2).upper()


def get_seasonality(freq: str) -> int:
    """Seasonal period used for MASE (same rule as GluonTS ``get_seasonality``).

    The base period of the frequency code is divided by the frequency's multiple when it divides evenly,
    else the period is 1.

    >>> get_seasonality("H"), get_seasonality("5T"), get_seasonality("10S"), get_seasonality("A-DEC")
    (24, 288, 360, 1)
    """
    multiple, code = split_freq(freq)
    base = BASE_SEASONALITY.get(code, 1)
    return base // multiple if base % multiple == 0 else 1
