"""The default model's results table aggregates like the issue's published figures."""

import re

from tirex_eval.leaderboard import load_chronos_published
from tirex_eval.offline_report import OFFLINE_TASKS, build_table


def test_published_tirex_through_the_table_gives_the_published_aggregates():
    published = load_chronos_published()
    published = published[published["task_name"].isin(OFFLINE_TASKS)]
    sn = published[published["model_name"] == "seasonal_naive"][["task_name", "MASE", "WQL"]]
    tirex = published[published["model_name"] == "tirex"][["task_name", "MASE", "WQL"]]
    table = build_table({"as ours": tirex}, sn)
    row = next(line for line in table.splitlines() if line.startswith("| as ours |"))
    values = [float(v) for v in re.findall(r"\d+\.\d+", row)]
    assert values == [0.821, 0.652, 0.839, 0.662]  # 8-task and 9-task figures of the issue and BENCHMARKS.md
    assert "| Chronos-Bolt-base (published) | 0.887 | 0.704 |" in table
    assert "| AutoETS (published) | 0.838 | 0.707 |" in table
