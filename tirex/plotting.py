"""Fan charts: history, median line, 10-90% and 20-80% bands."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd


def plot_fan_chart(history: pd.DataFrame, forecast: pd.DataFrame, path: str | Path, history_points: int = 200) -> Path:
    """Draw one panel per series and save a PNG.

    Args:
        history: long frame with ``item_id``, ``timestamp``, ``target``.
        forecast: long frame from ``forecast`` with ``item_id``, ``timestamp`` and the columns
            "0.1", "0.2", "0.5", "0.8", "0.9" (missing bands are skipped).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = list(dict.fromkeys(forecast["item_id"]))
    ncols = 1 if len(ids) == 1 else 2
    nrows = math.ceil(len(ids) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(7 * ncols, 3.2 * nrows), squeeze=False)
    for ax, item in zip(axes.flat, ids):
        h = history[history["item_id"] == item].tail(history_points)
        f = forecast[forecast["item_id"] == item]
        ax.plot(h["timestamp"], h["target"], color="black", lw=1, label="history")
        for lo, hi, alpha in (("0.1", "0.9", 0.2), ("0.2", "0.8", 0.35)):
            if lo in f and hi in f:
                ax.fill_between(f["timestamp"], f[lo], f[hi], color="tab:blue", alpha=alpha, lw=0,
                                label=f"{int(float(lo) * 100)}-{int(float(hi) * 100)}%")
        median = "0.5" if "0.5" in f else "mean"
        ax.plot(f["timestamp"], f[median], color="tab:blue", lw=1.5, label="median")
        ax.set_title(str(item), fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(ids):]:
        ax.set_visible(False)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
