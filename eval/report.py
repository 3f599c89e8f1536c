"""Summary tables (markdown) and a plot of relative scores."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from .io_utils import atomic_write_text


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub markdown table of ``frame`` (floats rounded to ``digits``)."""
    def cell(value):
        if isinstance(value, float):
            return "-" if value != value else f"{value:.{digits}f}"  # NaN: not available
        return str(value)

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def per_task_table(results: pd.DataFrame, baseline: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-task MASE / WQL of one run, with the published baseline's next to it when given."""
    table = results[["task_name", "MASE", "WQL"]].copy()
    if baseline is not None:
        base = baseline.set_index("task_name")
        table["published_SN_MASE"] = table["task_name"].map(base["MASE"])
        table["published_SN_WQL"] = table["task_name"].map(base["WQL"])
    return table


def plot_relative_scores(
    board: pd.DataFrame, columns: Sequence[str], path: str | Path, highlight: Sequence[str] = (),
    title: str = "relative score vs Seasonal Naive (lower is better)", top: int = 25,
) -> Path:
    """Horizontal bar chart of ``columns`` (e.g. relative WQL and MASE) per model; ``highlight`` in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = board.sort_values(columns[0])
    # the best ``top`` models plus the highlighted ones wherever they rank
    shown = ranked[(ranked.reset_index().index < top) | ranked["model"].isin(highlight).to_numpy()]
    fig, axes = plt.subplots(1, len(columns), figsize=(4.5 * len(columns), 0.3 * len(shown) + 1.5), sharey=True)
    axes = [axes] if len(columns) == 1 else list(axes)
    labels = shown["model"].astype(str).tolist()
    colors = ["tab:red" if m in highlight else "tab:blue" for m in labels]
    for ax, column in zip(axes, columns):
        ax.barh(labels, shown[column], color=colors)
        ax.axvline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel(column)
    axes[0].invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_report(output_dir: str | Path, title: str, sections: dict[str, pd.DataFrame], notes: str = "") -> Path:
    """Write ``OUTPUT_DIR/summary.md`` with one markdown table per section."""
    parts = [f"# {title}\n"]
    if notes:
        parts.append(notes.strip() + "\n")
    for heading, frame in sections.items():
        parts.append(f"## {heading}\n\n{markdown_table(frame)}")
    path = Path(output_dir) / "summary.md"
    atomic_write_text(path, "\n".join(parts))
    return path
