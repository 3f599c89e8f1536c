"""Fan charts: history, median line, 10-90% and 20-80% bands."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .io import atomic_write


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_plot_path(path: str | Path) -> str:
    """The image format of ``path`` from its suffix (png, svg, pdf, jpg, ...); ``ValueError`` if matplotlib cannot write it."""
    from matplotlib.figure import Figure

    fmt = Path(path).suffix.lower().lstrip(".")
    supported = Figure().canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(f"--plot {path}: cannot write {'a ' + repr(fmt) if fmt else 'a file without a suffix'} image; "
                         f"use one of {', '.join('.' + f for f in sorted(supported))}")
    return fmt


def _format_time_axis(ax, stamps: pd.Series) -> None:
    if pd.api.types.is_datetime64_any_dtype(stamps):
        import matplotlib.dates as mdates

        locator = mdates.AutoDateLocator(minticks=3, maxticks=7)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # hourly ticks read "06:00", dates once
    else:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(nbins=7, integer=True))


def fan_chart_figure(history: pd.DataFrame, forecast: pd.DataFrame, history_points: int = 200,
                     value_label: str = "value"):
    """A matplotlib figure with one panel per series (stacked; two columns from five series on, an odd
    last panel spanning both, so no cell is empty), labelled axes and date ticks that do not collide.

    Args:
        history: long frame with ``item_id``, ``timestamp``, ``target``.
        forecast: long frame from ``forecast`` with ``item_id``, ``timestamp`` and the columns
            "0.1", "0.2", "0.5", "0.8", "0.9" (missing bands are skipped).
        value_label: the y-axis label.
    """
    plt = _matplotlib()
    ids = list(dict.fromkeys(forecast["item_id"]))
    ncols = 1 if len(ids) <= 4 else 2
    nrows = math.ceil(len(ids) / ncols)
    fig = plt.figure(figsize=(8 if ncols == 1 else 13, 2.9 * nrows + 0.4))
    grid = fig.add_gridspec(nrows, 2 * ncols)
    for i, item in enumerate(ids):
        row, col = divmod(i, ncols)
        last_alone = ncols == 2 and i == len(ids) - 1 and col == 0  # an odd last panel spans the row: no empty cell
        ax = fig.add_subplot(grid[row, 0:4] if ncols == 1 or last_alone else grid[row, 2 * col:2 * col + 2])
        h = history[history["item_id"] == item].tail(history_points)
        f = forecast[forecast["item_id"] == item]
        ax.plot(h["timestamp"], h["target"], color="black", lw=1, label="history")
        for lo, hi, alpha in (("0.1", "0.9", 0.2), ("0.2", "0.8", 0.35)):
            if lo in f and hi in f:
                ax.fill_between(f["timestamp"], f[lo], f[hi], color="tab:blue", alpha=alpha, lw=0,
                                label=f"{int(float(lo) * 100)}-{int(float(hi) * 100)}%")
        median = "0.5" if "0.5" in f else "mean"
        ax.plot(f["timestamp"], f[median], color="tab:blue", lw=1.5, label="median")
        _format_time_axis(ax, pd.concat([h["timestamp"], f["timestamp"]], ignore_index=True))
        ax.set_title(str(item), fontsize=10)
        ax.set_xlabel("time")
        ax.set_ylabel(value_label)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def plot_fan_chart(history: pd.DataFrame, forecast: pd.DataFrame, path: str | Path, history_points: int = 200,
                   value_label: str = "value") -> Path:
    """Draw ``fan_chart_figure`` and save it atomically; the suffix of ``path`` picks the format (``check_plot_path``)."""
    fmt = check_plot_path(path)
    plt = _matplotlib()
    fig = fan_chart_figure(history, forecast, history_points, value_label)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format=fmt))
    finally:
        plt.close(fig)
    return Path(path)
