"""Writes notebooks/quickstart.ipynb (kept as code so diffs stay readable). Run: python notebooks/make_quickstart.py"""

from pathlib import Path

import nbformat as nbf

cells = [
    nbf.v4.new_markdown_cell("# tirex quick start\n\nLoad the bundled model, forecast every input type, plot, and score a held-out window. Runs offline on a CPU in well under a minute."),
    nbf.v4.new_code_cell("""import numpy as np
import pandas as pd
import torch
from importlib import resources

from tirex import load_model

model = load_model()  # the default model bundled with the package (no download)
print(model.config)
print(f"{model.num_parameters:,} parameters")"""),
    nbf.v4.new_markdown_cell("## Real data: the bundled demo series (public domain, via statsmodels)"),
    nbf.v4.new_code_cell("""demo = pd.read_csv(resources.files("tirex") / "data" / "demo.csv", parse_dates=["timestamp"])
demo.groupby("item_id").size()"""),
    nbf.v4.new_markdown_cell("## 1. A long DataFrame in, a long DataFrame out"),
    nbf.v4.new_code_cell("""fc = model.forecast(demo, prediction_length=24)
fc.head()"""),
    nbf.v4.new_markdown_cell("## 2. numpy / torch arrays, ragged lists, a pandas Series"),
    nbf.v4.new_code_cell("""co2 = demo[demo.item_id == "co2_mauna_loa_monthly"].set_index("timestamp")["target"]
q, mean = model.forecast(co2.to_numpy(), prediction_length=12)           # numpy in -> numpy out
print(q.shape, mean.shape)                                                  # (1, 12, 9) (1, 12)
series = [g.target.to_numpy() for _, g in demo.groupby("item_id")]          # different lengths
q, mean = model.forecast(series, prediction_length=12, quantile_levels=[0.05, 0.5, 0.95])
print(type(q).__name__, tuple(q.shape))
model.forecast(co2, prediction_length=6)                                    # Series -> DataFrame by future date"""),
    nbf.v4.new_markdown_cell("## 3. A GluonTS dataset"),
    nbf.v4.new_code_cell("""from gluonts.dataset.common import ListDataset

ds = ListDataset([{"start": co2.index[0], "target": co2.to_numpy()}], freq="M")
forecast = model.forecast(ds, prediction_length=12)[0]
forecast.quantile(0.5)[:4]"""),
    nbf.v4.new_markdown_cell("## 4. A fan chart"),
    nbf.v4.new_code_cell("""from tirex.plotting import plot_fan_chart
from IPython.display import Image

plot_fan_chart(demo, fc, "quickstart_fan.png")
Image("quickstart_fan.png")"""),
    nbf.v4.new_markdown_cell("## 5. Score a held-out window (MASE and WQL against seasonal naive)"),
    nbf.v4.new_code_cell("""h, m = 24, 12
y = co2.to_numpy()
history, future = y[:-h], y[-h:]
q, mean = model.forecast(history, prediction_length=h)
levels = np.array(model.config.quantile_levels)

def wql(y, q):
    diff = y[:, None] - q
    return 2 * np.sum(np.maximum(levels * diff, (levels - 1) * diff)) / len(levels) / np.sum(np.abs(y))

scale = np.nanmean(np.abs(history[m:] - history[:-m]))
naive = np.tile(history[-m:], h // m + 1)[:h]
print(f"MASE  tirex {np.mean(np.abs(future - mean[0])) / scale:.3f}   seasonal naive {np.mean(np.abs(future - naive)) / scale:.3f}")
print(f"WQL   tirex {wql(future, q[0]):.4f}")
assert np.isfinite(q).all()"""),
]
nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
nbf.write(nb, Path(__file__).with_name("quickstart.ipynb"))
