"""Evaluation harnesses: GIFT-Eval, Chronos Benchmark II (fev), baselines, the offline suite.

>>> from tirex_eval import run_chronos_benchmark, chronos_leaderboard
>>> results = run_chronos_benchmark("seasonal_naive", "out", data_dir="offline_data", tasks=["monash_m1_yearly"])
"""

from .chronos_bench import load_task_configs, run_chronos_benchmark
from .forecasters import (
    BASELINES, QUANTILE_LEVELS, CallableForecaster, ForecastError, Forecaster, ModelForecaster, StatsForecaster,
    make_forecaster, validate_forecast,
)
from .gift_eval import RESULT_COLUMNS, load_configs, run_gift_eval
from .leaderboard import chronos_leaderboard, gift_leaderboard
from .metrics import gift_eval_metrics
from .offline import OFFLINE_TASKS, build_offline_suite
from .seasonality import get_seasonality

__all__ = [
    "BASELINES", "CallableForecaster", "ForecastError", "Forecaster", "ModelForecaster", "OFFLINE_TASKS",
    "QUANTILE_LEVELS", "RESULT_COLUMNS", "StatsForecaster", "build_offline_suite", "chronos_leaderboard",
    "get_seasonality", "gift_eval_metrics", "gift_leaderboard", "load_configs", "load_task_configs",
    "make_forecaster", "run_chronos_benchmark", "run_gift_eval", "validate_forecast",
]
