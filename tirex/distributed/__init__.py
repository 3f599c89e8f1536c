"""Forecasting datasets too large for one process, on Ray (``pip install 'tirex[distributed]'``).

>>> from tirex.distributed import forecast_dataset
>>> forecast_dataset("s3://bucket/sales/", horizon=28, output="s3://bucket/forecasts/")   # or local folders

Layout of the package, in the order the work flows: ``partitions`` (input files, output files, atomic
writes and resume stamps), ``worker`` (the model replicas inside Ray actors), ``engine`` (the driver:
``forecast_dataset`` and ``forecast_series``), ``cli`` (``tirex forecast --engine ray``). Importing this
package does not import Ray; the functions do, and say how to install it when it is missing.
"""

__all__ = ["DatasetResult", "ShippedModel", "connect", "forecast_dataset", "forecast_series", "require_ray",
           "ship_model"]


def __getattr__(name):
    # lazy, so that `tirex --help` (which imports .cli for its options) stays fast
    if name in __all__:
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
