"""The forecast server as a real uvicorn process on a free port, spoken to over HTTP (httpx) and MCP
(the SDK's own client): answers equal to ``model.forecast``, the bad-input table, the limits, the API
key, readiness, concurrency with batching, timeouts, overload and graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("mcp")
httpx = pytest.importorskip("httpx")

from tirex import bundled_model_dir, load_model  # noqa: E402

from hub_server import HubServer  # noqa: E402

KEY = "test-key-123"
AUTH = {"X-API-Key": KEY}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``tirex serve`` in a subprocess; ``url`` once it answers /health."""

    def __init__(self, *args: str, env: dict | None = None, wait_ready: bool = True):
        self.port = free_port()
        self.output = None
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "tirex", "serve", "--port", str(self.port), "--threads", "1", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
        self._wait("/health", 200)
        if wait_ready:
            self._wait("/ready", 200, headers=AUTH)

    def _wait(self, path: str, status: int, headers=None, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + path, headers=headers, timeout=2).status_code == status:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{path} never answered {status}")

    def stop(self, timeout: float = 60) -> str:
        """SIGTERM (uvicorn's graceful shutdown); returns everything the server printed."""
        if self.output is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.output, _ = self.proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.output, _ = self.proc.communicate()
        return self.output


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_model()


@pytest.fixture(scope="module")
def server():
    srv = Server("--api-key", KEY, "--max-series", "100", "--max-context-length", "5000", "--max-horizon", "512",
                 "--max-body-bytes", "2000000", "--max-quantile-levels", "20", "--batch-window-ms", "10")
    yield srv
    out = srv.stop()
    assert "Traceback" not in out, out  # no request made the server print a traceback


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        yield c


def series(n: int, length: int = 300, seed: int = 0) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    return [list(np.round(10 + 3 * np.sin(t / (4 + i)) + rng.normal(size=length).cumsum() * 0.3, 4))
            for i in range(n)]


def assert_same(answer, expected: torch.Tensor, exact: bool = True):
    got = torch.tensor(answer, dtype=torch.float32)
    if exact:  # the same rows through the same forward: bit for bit
        assert torch.equal(got, expected), (got - expected).abs().max()
    else:  # shared with other requests: the package's batch tolerance (README "Inputs and outputs")
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)


def metric(client, name: str, labels: str = "") -> float:
    """The value of a Prometheus sample (summed over label sets unless ``labels`` picks one)."""
    text = (client.get("/metrics") if isinstance(client, httpx.Client) else httpx.get(client + "/metrics")).text
    pattern = rf"^{re.escape(name)}{re.escape(labels) if labels else ''}\s+(\S+)$"
    return sum(float(m) for m in re.findall(pattern, text, flags=re.M))


# -- answers ----------------------------------------------------------------------------------------
def test_reference_body_equals_model_forecast(client, model):
    context = series(3)
    context[1] = context[1][:120]  # lengths may differ (left NaN padding, as forecast does)
    context[2][50] = None  # null = missing
    mean = client.post("/forecast/mean", json={"context": context, "prediction_length": 24})
    quantiles = client.post("/forecast/quantiles", json={"context": context, "prediction_length": 24})
    assert mean.status_code == quantiles.status_code == 200, mean.text
    local = [np.array(c, dtype=float) for c in context]
    q, m = model.forecast(local, prediction_length=24)
    assert_same(mean.json(), m)
    assert_same(quantiles.json(), q)
    assert np.array(quantiles.json()).shape == (3, 24, 9)


def test_reference_defaults_prediction_length_32(client, model):
    response = client.post("/forecast/mean", json={"context": series(1)})
    assert response.status_code == 200
    assert len(response.json()[0]) == 32


def test_quantile_levels_and_rollout_steps(client, model):
    context = series(2, 400, seed=3)
    levels = [0.05, 0.25, 0.5, 0.75, 0.95]
    response = client.post("/forecast/quantiles", json={"context": context, "prediction_length": 40,
                                                        "quantile_levels": levels, "rollout_steps": 2})
    assert response.status_code == 200, response.text
    q, _ = model.forecast(context, prediction_length=40, quantile_levels=levels, rollout_steps=2)
    assert_same(response.json(), q)


def test_rich_body_equals_dataframe_forecast(client, model):
    values = series(2, 200, seed=5)
    values[0][10] = None
    hourly = pd.date_range("2024-03-01", periods=200, freq="h")
    body = {
        "series": [
            {"item_id": "north", "timestamps": [t.isoformat() for t in hourly], "values": values[0]},
            {"item_id": 17, "start": "2023-01-01", "values": values[1]},
        ],
        "freq": None,
        "prediction_length": 12,
        "quantile_levels": [0.1, 0.5, 0.9],
    }
    assert client.post("/forecast/quantiles", json=body).status_code == 422  # `start` needs `freq`
    body["series"][1] = {"item_id": 17, "timestamps": [t.isoformat() for t in pd.date_range("2023-01-01", periods=200,
                                                                                             freq="D")],
                         "values": values[1]}
    response = client.post("/forecast/quantiles", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert [f["item_id"] for f in answer["forecasts"]] == ["north", 17]  # request order, ids as sent
    frame = pd.concat([
        pd.DataFrame({"item_id": "north", "timestamp": hourly, "target": np.array(values[0], dtype=float)}),
        pd.DataFrame({"item_id": "17", "timestamp": pd.date_range("2023-01-01", periods=200, freq="D"),
                      "target": values[1]}),
    ])
    expected = model.forecast(frame, prediction_length=12, quantile_levels=[0.1, 0.5, 0.9])
    for got in answer["forecasts"]:
        rows = expected[expected.item_id == str(got["item_id"])]
        assert got["timestamps"] == [t.isoformat() for t in rows.timestamp]
        assert_same(got["mean"], torch.tensor(rows["mean"].to_numpy()))
        for level in ("0.1", "0.5", "0.9"):
            assert_same(got["quantiles"][level], torch.tensor(rows[level].to_numpy()))
    assert answer["forecasts"][0]["timestamps"][0] == "2024-03-09T08:00:00"  # 200 hours after the start
    mean_only = client.post("/forecast/mean", json=body).json()
    assert "quantiles" not in mean_only["forecasts"][0] or mean_only["forecasts"][0]["quantiles"] is None
    assert mean_only["forecasts"][1]["mean"] == answer["forecasts"][1]["mean"]


def test_rich_body_with_start_and_freq(client, model):
    values = series(1, 60, seed=9)[0]
    body = {"series": [{"item_id": "m", "start": "2019-01-01", "values": values}], "freq": "MS",
            "prediction_length": 6}
    response = client.post("/forecast/mean", json=body)
    assert response.status_code == 200, response.text
    forecast = response.json()["forecasts"][0]
    assert forecast["timestamps"][0] == "2024-01-01T00:00:00" and forecast["timestamps"][-1] == "2024-06-01T00:00:00"
    _, m = model.forecast([values], prediction_length=6)
    assert_same(forecast["mean"], m[0])


def test_freq_sets_the_step_of_the_forecast_timestamps(model):
    """The library path the rich form shares: ``freq`` overrides the inferred frequency."""
    frame = pd.DataFrame({"item_id": "a", "timestamp": pd.date_range("2024-01-01", periods=40, freq="D"),
                          "target": np.sin(np.arange(40.0))})
    inferred = model.forecast(frame, prediction_length=3)
    assert list(inferred.timestamp) == list(pd.date_range("2024-02-10", periods=3, freq="D"))
    mondays = frame[frame.timestamp.dt.day_of_week == 0]  # anchored: the first step after the data is a Monday
    weekly = model.forecast(mondays, prediction_length=3, freq="W-MON")
    assert list(weekly.timestamp) == list(pd.date_range(mondays.timestamp.max(), periods=4, freq="W-MON")[1:])
    with pytest.raises(ValueError, match="not on a W-MON grid"):  # a frequency the timestamps contradict
        model.forecast(frame, prediction_length=3, freq="W-MON")
    three = frame.iloc[[0, 1, 5]]  # gaps on a daily grid become missing values
    assert list(model.forecast(three, prediction_length=3, freq="D").timestamp) == list(pd.date_range("2024-01-07", periods=3))


# -- the bad-input table: a 4xx naming the field, never a 500 ----------------------------------------
GOOD = {"context": [[1.0, 2.0, 3.0, 4.0]], "prediction_length": 4}
RICH = {"item_id": "a", "timestamps": ["2024-01-01", "2024-01-02", "2024-01-03"], "values": [1, 2, 3]}


def raw(text: str):
    return text.encode()


BAD_INPUT = [  # (case, body: dict or raw bytes, content type, status, field named in the error)
    ("malformed JSON", raw('{"context": [[1, 2]], '), "application/json", 400, "body"),
    ("body is a list", [1, 2], "application/json", 422, "body"),
    ("no body", raw(""), "application/json", 422, "body"),
    ("not JSON content type", raw(json.dumps(GOOD)), "text/plain", 415, "header.content-type"),
    ("context is a string", {**GOOD, "context": "1,2,3"}, None, 422, "context"),
    ("context is flat", {**GOOD, "context": [1, 2, 3]}, None, 422, "context[0]"),
    ("value is a string", {**GOOD, "context": [[1, "2", 3]]}, None, 422, "context[0][1]"),
    ("value is a bool", {**GOOD, "context": [[1, True, 3]]}, None, 422, "context[0][1]"),
    ("value is an object", {**GOOD, "context": [[1, {"v": 2}]]}, None, 422, "context[0][1]"),
    ("NaN token", raw('{"context": [[1, 2, NaN]], "prediction_length": 3}'), "application/json", 422, "context[0][2]"),
    ("Infinity token", raw('{"context": [[Infinity, 2]], "prediction_length": 3}'), "application/json", 422,
     "context[0][0]"),
    ("-Infinity token", raw('{"context": [[1, -Infinity]], "prediction_length": 3}'), "application/json", 422,
     "context[0][1]"),
    ("NaN as a string", {**GOOD, "context": [[1, "NaN"]]}, None, 422, "context[0][1]"),
    ("number overflowing to inf", raw('{"context": [[1, 1e999]], "prediction_length": 3}'), "application/json",
     422, "context[0][1]"),
    ("empty series", {**GOOD, "context": [[1, 2], []]}, None, 422, "context"),
    ("empty context", {**GOOD, "context": []}, None, 422, "context"),
    ("negative horizon", {**GOOD, "prediction_length": -5}, None, 422, "prediction_length"),
    ("zero horizon", {**GOOD, "prediction_length": 0}, None, 422, "prediction_length"),
    ("fractional horizon", {**GOOD, "prediction_length": 2.5}, None, 422, "prediction_length"),
    ("horizon as a string", {**GOOD, "prediction_length": "24"}, None, 422, "prediction_length"),
    ("horizon as a bool", {**GOOD, "prediction_length": True}, None, 422, "prediction_length"),
    ("huge horizon", {**GOOD, "prediction_length": 10**30}, None, 422, "prediction_length"),
    ("quantile level 0", {**GOOD, "quantile_levels": [0.0, 0.5]}, None, 422, "quantile_levels"),
    ("quantile level above 1", {**GOOD, "quantile_levels": [0.5, 1.2]}, None, 422, "quantile_levels"),
    ("no quantile levels", {**GOOD, "quantile_levels": []}, None, 422, "quantile_levels"),
    ("quantile level as a string", {**GOOD, "quantile_levels": ["0.5"]}, None, 422, "quantile_levels[0]"),
    ("rollout_steps 0", {**GOOD, "rollout_steps": 0}, None, 422, "rollout_steps"),
    ("rollout_steps negative", {**GOOD, "rollout_steps": -2}, None, 422, "rollout_steps"),
    ("unknown field", {**GOOD, "horizon": 12}, None, 422, "horizon"),
    ("unknown field in a series", {"series": [{**RICH, "colour": "red"}], "freq": "D"}, None, 422,
     "series[0].colour"),
    ("context and series", {**GOOD, "series": [RICH]}, None, 422, "body"),
    ("neither context nor series", {"prediction_length": 3}, None, 422, "body"),
    ("freq with context", {**GOOD, "freq": "D"}, None, 422, "body"),
    ("series without values", {"series": [{"item_id": "a", "start": "2024-01-01"}], "freq": "D"}, None, 422,
     "series[0].values"),
    ("series with empty values", {"series": [{**RICH, "values": [], "timestamps": []}]}, None, 422,
     "series[0].values"),
    ("timestamps and start", {"series": [{**RICH, "start": "2024-01-01"}], "freq": "D"}, None, 422, "series[0]"),
    ("timestamps and values differ in length", {"series": [{**RICH, "values": [1, 2]}]}, None, 422, "series[0]"),
    ("unparseable timestamp", {"series": [{**RICH, "timestamps": ["2024-01-01", "soon", "2024-01-03"]}]}, None, 422,
     "series"),
    ("irregular timestamps", {"series": [{**RICH, "timestamps": ["2024-01-01 00:00", "2024-01-01 00:07",
                                                                 "2024-01-01 03:00"]}]}, None, 422, "series"),
    ("duplicate timestamps", {"series": [{**RICH, "timestamps": ["2024-01-01", "2024-01-01", "2024-01-02"]}]}, None,
     422, "series"),
    ("duplicate item ids", {"series": [RICH, RICH]}, None, 422, "series[1].item_id"),
    ("item id of the wrong type", {"series": [{**RICH, "item_id": 1.5}]}, None, 422, "series[0].item_id"),
    ("start without freq", {"series": [{"item_id": "a", "start": "2024-01-01", "values": [1, 2, 3]}]}, None, 422,
     "series[0].start"),
    ("unknown freq", {"series": [{"item_id": "a", "start": "2024-01-01", "values": [1, 2, 3]}], "freq": "fortnight"},
     None, 422, "freq"),
    ("unparseable start", {"series": [{"item_id": "a", "start": "someday", "values": [1, 2, 3]}], "freq": "D"}, None,
     422, "series[0].start"),
]


@pytest.mark.parametrize("case, body, content_type, status, where", BAD_INPUT, ids=[row[0] for row in BAD_INPUT])
def test_bad_input(client, case, body, content_type, status, where):
    if isinstance(body, bytes):
        response = client.post("/forecast/quantiles", content=body,
                               headers={"content-type": content_type, **AUTH})
    else:
        response = client.post("/forecast/quantiles", json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["error"].startswith(where) or f" {where}" in error["error"], error
    assert error["detail"] and all({"loc", "msg", "type"} <= set(d) for d in error["detail"])


@pytest.mark.parametrize("values", [[None, None, None], [5.0] * 50, [0.0] * 20, [1e30, 2e30, 3e30] * 10,
                                    [1e39, 2.0] * 10], ids=["all null", "constant", "zeros", "1e30", "1e39"])
def test_unusual_values_get_a_finite_forecast_or_a_clear_error(client, values):
    response = client.post("/forecast/quantiles", json={"context": [values], "prediction_length": 8})
    assert response.status_code in (200, 422), response.text
    if response.status_code == 200:
        assert np.isfinite(np.array(response.json())).all()
    else:
        assert response.json()["error"].startswith("context")


def test_server_survives_the_bad_input_table(client):
    assert client.get("/health").json()["status"] == "ok"
    assert client.post("/forecast/mean", json=GOOD).status_code == 200
    assert metric(client, "tirex_http_requests_total", '{route="/forecast/quantiles",status="500"}') == 0


# -- limits -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, where", [
    ({"context": [[1.0, 2.0]] * 101, "prediction_length": 4}, "context"),
    ({"context": [[1.0, 2.0], [0.5] * 5001], "prediction_length": 4}, "context[1]"),
    ({"series": [{"item_id": "a", "start": "2024-01-01", "values": [0.5] * 5001}], "freq": "D"}, "series[0].values"),
    ({"context": [[1.0, 2.0]], "prediction_length": 513}, "prediction_length"),
    ({"context": [[1.0, 2.0]], "quantile_levels": [0.01 * i for i in range(1, 22)]}, "quantile_levels"),
], ids=["series per request", "context length", "context length (rich)", "horizon", "quantile levels"])
def test_request_limits(client, body, where):
    response = client.post("/forecast/mean", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith(where) and "at most" in response.json()["error"]


def test_body_size_limit_declared_and_streamed(client):
    big = json.dumps({"context": [[1.5] * 450000], "prediction_length": 4}).encode()  # > 2,000,000 bytes
    declared = client.post("/forecast/mean", content=big, headers={"content-type": "application/json", **AUTH})
    assert declared.status_code == 413 and "at most 2000000" in declared.json()["error"]

    def chunks():  # no Content-Length: chunked transfer encoding
        for i in range(0, len(big), 100000):
            yield big[i:i + 100000]

    streamed = client.post("/forecast/mean", content=chunks(), headers={"content-type": "application/json", **AUTH})
    assert streamed.status_code == 413
    assert client.post("/forecast/mean", json=GOOD).status_code == 200


# -- API key, docs, model, metrics ------------------------------------------------------------------
@pytest.mark.parametrize("method, path", [("POST", "/forecast/mean"), ("POST", "/forecast/quantiles"),
                                          ("GET", "/ready"), ("GET", "/model"), ("GET", "/metrics"),
                                          ("GET", "/docs"), ("GET", "/openapi.json"), ("POST", "/mcp")])
def test_api_key_on_every_route_but_health(server, method, path):
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
        response = httpx.request(method, server.url + path, json=GOOD, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert "API key" in response.json()["error"]
    assert httpx.get(server.url + "/health").status_code == 200
    ok = httpx.request(method, server.url + path, json=GOOD, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code != 401


def test_docs_and_openapi_schema(client):
    assert "swagger" in client.get("/docs").text.lower()
    schema = client.get("/openapi.json").json()
    assert {"/forecast/mean", "/forecast/quantiles", "/health", "/ready", "/model", "/metrics"} <= set(schema["paths"])
    request = schema["components"]["schemas"]["ForecastRequest"]
    assert {"context", "series", "prediction_length", "quantile_levels", "rollout_steps", "freq"} <= set(
        request["properties"])
    assert request["additionalProperties"] is False
    assert {"APIKeyHeader", "HTTPBearer"} <= set(schema["components"]["securitySchemes"])


def test_model_info(client, model):
    info = client.get("/model").json()
    assert info["parameters"] == model.num_parameters
    assert info["config"]["context_length"] == model.config.context_length
    assert info["version"] and info["source"]
    assert info["server"]["api_key"] is True and KEY not in json.dumps(info)
    assert info["server"]["max_horizon"] == 512 and info["server"]["batching"] is True


def test_metrics_count_requests_and_batches(client):
    before = metric(client, "tirex_http_requests_total", '{route="/forecast/mean",status="200"}')
    forwards = metric(client, "tirex_batch_series_count")
    for _ in range(3):
        assert client.post("/forecast/mean", json=GOOD).status_code == 200
    assert metric(client, "tirex_http_requests_total", '{route="/forecast/mean",status="200"}') == before + 3
    assert metric(client, "tirex_batch_series_count") >= forwards + 1
    text = client.get("/metrics").text
    for name in ("tirex_http_request_duration_seconds_bucket", "tirex_batch_requests_bucket",
                 "tirex_forward_duration_seconds_sum", "tirex_queue_series", "tirex_http_requests_in_flight"):
        assert name in text


# -- concurrency and batching -----------------------------------------------------------------------
def test_concurrent_clients_get_their_own_results(server, client, model):
    """48 clients at once, with different series, horizons and levels: every answer is that
    client's own forecast, and requests did share forward passes."""
    cases = []
    for i in range(48):
        context = series(1 + i % 3, 100 + 7 * i, seed=100 + i)
        horizon = (20, 24, 32, 40)[i % 4]  # 20 and 24 share the same rollout (2 patches of 16)
        levels = None if i % 5 else [0.2, 0.5, 0.8]
        cases.append((context, horizon, levels))
    shared = metric(client, "tirex_batch_requests_count") - metric(client, "tirex_batch_requests_bucket", '{le="1.0"}')
    barrier = threading.Barrier(len(cases))

    def call(case):
        context, horizon, levels = case
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
            barrier.wait()
            return c.post("/forecast/quantiles", json={"context": context, "prediction_length": horizon,
                                                       "quantile_levels": levels})

    with ThreadPoolExecutor(len(cases)) as pool:
        responses = list(pool.map(call, cases))
    for (context, horizon, levels), response in zip(cases, responses):
        assert response.status_code == 200, response.text
        q, _ = model.forecast(context, prediction_length=horizon, quantile_levels=levels)
        assert_same(response.json(), q, exact=False)
    now_shared = metric(client, "tirex_batch_requests_count") - metric(client, "tirex_batch_requests_bucket",
                                                                       '{le="1.0"}')
    assert now_shared > shared  # at least one forward pass served several requests


def test_health_answers_while_a_batch_runs(server, client):
    heavy = {"context": series(64, 512, seed=1), "prediction_length": 256}  # about a second of compute
    done = {}

    def forecast():
        response = httpx.post(server.url + "/forecast/mean", json=heavy, headers=AUTH, timeout=120)
        done["forecast"] = (time.monotonic(), response.status_code)

    worker = threading.Thread(target=forecast)
    worker.start()
    while metric(client, "tirex_http_requests_in_flight") < 2:  # this /metrics call is one of them
        time.sleep(0.005)
    health = httpx.get(server.url + "/health", timeout=30)
    answered = time.monotonic()
    worker.join()
    assert health.status_code == 200
    assert done["forecast"][1] == 200
    assert answered < done["forecast"][0]  # /health answered while the forecast was still running


# -- MCP --------------------------------------------------------------------------------------------
def test_mcp_forecast_tool_through_the_sdk_client(server, model):
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    context = series(1, 250, seed=11)[0]

    async def session():
        http = httpx2.AsyncClient(headers=AUTH, timeout=60)
        async with Client(streamable_http_client(server.url + "/mcp", http_client=http)) as mcp:
            tools = await mcp.list_tools()
            ok = await mcp.call_tool("forecast", {"context": context, "prediction_length": 12,
                                                  "quantile_levels": [0.1, 0.9]})
            bad = await mcp.call_tool("forecast", {"context": [], "prediction_length": 12})
            negative = await mcp.call_tool("forecast", {"context": [1.0, 2.0], "prediction_length": -1})
        await http.aclose()
        return tools, ok, bad, negative

    tools, ok, bad, negative = asyncio.run(session())
    assert [t.name for t in tools.tools] == ["forecast"]
    assert {"context", "prediction_length", "quantile_levels"} <= set(tools.tools[0].input_schema["properties"])
    assert not ok.is_error
    q, m = model.forecast([context], prediction_length=12, quantile_levels=[0.1, 0.9])
    assert_same(ok.structured_content["mean"], m[0])
    assert_same(ok.structured_content["quantiles"]["0.9"], q[0, :, 1])
    assert bad.is_error and "empty" in bad.content[0].text
    assert negative.is_error and "prediction_length" in negative.content[0].text


# -- timeout, overload ------------------------------------------------------------------------------
def test_timeout_and_overload_answer_and_the_server_lives_on():
    srv = Server("--request-timeout", "1.0", "--max-queue-series", "100")
    try:
        heavy = {"context": series(64, 512, seed=2), "prediction_length": 512}  # seconds of compute
        slow = httpx.post(srv.url + "/forecast/mean", json=heavy, timeout=60)
        assert slow.status_code == 504 and "timeout" in slow.json()["error"]
        assert httpx.get(srv.url + "/health").status_code == 200
        with ThreadPoolExecutor(1) as pool:  # the forward of `slow` still runs: this one waits in the queue ...
            queued = pool.submit(httpx.post, srv.url + "/forecast/mean", json=heavy, timeout=60)
            while metric(srv.url, "tirex_queue_series") < 64:
                assert not queued.done(), queued.result().text
                time.sleep(0.005)
            # ... and 64 + 40 queued series would be more than the server's 100
            refused = httpx.post(srv.url + "/forecast/mean", json={"context": series(40, 64), "prediction_length": 4},
                                 timeout=60)
            assert queued.result().status_code == 504
        assert refused.status_code == 503 and "busy" in refused.json()["error"], refused.text
        assert refused.headers["retry-after"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # once the forward is done, requests succeed again
            if httpx.post(srv.url + "/forecast/mean", json=GOOD, timeout=60).status_code == 200:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the server did not recover")
    finally:
        out = srv.stop()
    assert "Traceback" not in out, out


# -- readiness and graceful shutdown ---------------------------------------------------------------
@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    shutil.copytree(bundled_model_dir(), root / "acme" / "tiny")
    with HubServer(root) as hub:
        hub.cache = root.parent / "cache"
        yield hub


def test_ready_before_and_after_load_then_graceful_shutdown(hub, model):
    hub.gate.clear()  # the download hangs until the test opens the gate
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(hub.cache), "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "0"}
    srv = Server("--model", "acme/tiny", env=env, wait_ready=False)
    try:
        assert httpx.get(srv.url + "/health").json() == {"status": "ok", "model": "loading", "error": None}
        assert httpx.get(srv.url + "/ready").status_code == 503
        loading = httpx.post(srv.url + "/forecast/mean", json=GOOD)
        assert loading.status_code == 503 and "loading" in loading.json()["error"]
        hub.gate.set()
        srv._wait("/ready", 200)
        assert httpx.get(srv.url + "/model").json()["source"] == "acme/tiny"

        # graceful shutdown: a forecast in flight when SIGTERM arrives still gets its answer
        context = series(64, 512, seed=4)
        result = {}

        def forecast():
            response = httpx.post(srv.url + "/forecast/mean", json={"context": context, "prediction_length": 256},
                                  timeout=120)
            result["at"], result["response"] = time.monotonic(), response

        worker = threading.Thread(target=forecast)
        worker.start()
        while metric(srv.url, "tirex_http_requests_in_flight") < 2:
            time.sleep(0.005)
        signalled = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        worker.join()
        out = srv.stop()
    finally:
        hub.gate.set()
        srv.stop()
    assert result["at"] > signalled
    assert result["response"].status_code == 200
    _, m = model.forecast(context, prediction_length=256)
    assert_same(result["response"].json(), m)
    # uvicorn re-raises the SIGTERM it caught once the shutdown is complete
    assert srv.proc.returncode in (0, -signal.SIGTERM) and "Traceback" not in out, out
    assert "Application shutdown complete" in out and "Finished server process" in out
    with pytest.raises(httpx.ConnectError):  # gone: no new connections
        httpx.get(srv.url + "/health")


def test_cli_refuses_bad_settings(capsys):
    from tirex.cli import main

    assert main(["serve", "--max-horizon", "0"]) == 2
    assert "max_horizon" in capsys.readouterr().err


def test_a_model_that_fails_to_load_is_reported_not_hidden(tmp_path):
    """In-process uvicorn on a real socket: /health turns 503 with the loader's error; forecasts say why."""
    import uvicorn

    from tirex.serve import ServerSettings, create_app

    port = free_port()
    app = create_app(ServerSettings(model=str(tmp_path / "no-such-model"), port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                health = httpx.get(url + "/health")
                if health.json()["model"] != "loading":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        assert health.status_code == 503 and health.json()["model"] == "failed"
        assert "no-such-model" in health.json()["error"]
        response = httpx.post(url + "/forecast/mean", json=GOOD)
        assert response.status_code == 503 and "failed to load" in response.json()["error"]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
