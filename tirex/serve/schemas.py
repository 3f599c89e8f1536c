"""Request and response bodies of the HTTP API (pydantic; the OpenAPI schema at /docs comes from them).

The models fix the JSON shape only: which fields exist, their JSON types, and that a number is a
finite number (JSON has no NaN or infinity: a missing value is ``null``). What the values mean
(empty series, horizons, quantile levels, timestamps) is checked by the package's own input layer
(``tirex.inputs``, ``tirex.validation.check_run``, ``tirex.frames``), as for every other entry point.
"""

from __future__ import annotations

from typing import Annotated, Optional, Union

from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict, StrictInt, StrictStr, model_validator

# A JSON number that is finite (NaN / Infinity tokens and numeric strings are refused); null = missing.
Value = Optional[Annotated[float, Strict(), AllowInfNan(False)]]
Level = Annotated[float, Strict(), AllowInfNan(False)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SeriesItem(_Body):
    """One series of the rich form: its values and either every timestamp or the first one."""

    item_id: Union[StrictStr, StrictInt] = Field(description="the series' id, returned with its forecast")
    values: list[Value] = Field(min_length=1, description="observations, oldest first; null = missing")
    timestamps: Optional[list[StrictStr]] = Field(
        None, description="ISO 8601 timestamp of every value (regular spacing; the frequency is inferred)"
    )
    start: Optional[StrictStr] = Field(None, description="timestamp of the first value (needs `freq`)")

    @model_validator(mode="after")
    def _one_time_axis(self) -> "SeriesItem":
        if (self.timestamps is None) == (self.start is None):
            raise ValueError("give exactly one of `timestamps` (one per value) and `start` (with `freq`)")
        if self.timestamps is not None and len(self.timestamps) != len(self.values):
            raise ValueError(f"`timestamps` has {len(self.timestamps)} entries for {len(self.values)} values")
        return self


class ForecastRequest(_Body):
    """A forecast request: the reference server's body (``context``) or the rich form (``series``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"context": [[0.0, 1.0, 2.0, 3.0, 2.0, 1.0, 0.0, 1.0, 2.0, 3.0]], "prediction_length": 4},
                {
                    "series": [{"item_id": "store_1", "start": "2024-01-01", "values": [5, 7, None, 6, 8, 9, 7]}],
                    "freq": "D",
                    "prediction_length": 3,
                    "quantile_levels": [0.1, 0.5, 0.9],
                },
            ]
        },
    )

    context: Optional[list[list[Value]]] = Field(
        None, description="reference form: one list of values per series (lengths may differ; null = missing)"
    )
    series: Optional[list[SeriesItem]] = Field(
        None, description="rich form: series with ids and timestamps; forecasts come back timestamped"
    )
    freq: Optional[StrictStr] = Field(
        None, description="rich form: pandas frequency of the series (e.g. 'D', 'h', '15min', 'MS'); inferred when omitted"
    )
    prediction_length: StrictInt = Field(32, description="steps to forecast (the reference server's default: 32)")
    quantile_levels: Optional[list[Level]] = Field(
        None, description="levels in (0, 1); default the model's own (0.1, ..., 0.9)"
    )
    rollout_steps: StrictInt = Field(1, description="patches predicted per forward pass (accelerated rollout)")

    @model_validator(mode="after")
    def _one_form(self) -> "ForecastRequest":
        if (self.context is None) == (self.series is None):
            raise ValueError("give exactly one of `context` (the reference form) and `series` (the rich form)")
        if self.context is not None and self.freq is not None:
            raise ValueError("`freq` belongs to the rich form (`series`); `context` has no timestamps")
        return self


class SeriesForecast(BaseModel):
    item_id: Union[str, int]
    timestamps: list[str] = Field(description="ISO 8601 timestamps of the forecast steps")
    mean: list[float] = Field(description="point forecast (the median, as the reference defines it)")
    quantiles: Optional[dict[str, list[float]]] = Field(
        None, description="one list per quantile level, keyed like the DataFrame columns ('0.1', ...)"
    )


class SeriesForecastResponse(BaseModel):
    """Rich-form answer: one timestamped forecast per series, in the order of the request."""

    prediction_length: int
    quantile_levels: list[float]
    forecasts: list[SeriesForecast]


MeanResponse = Union[list[list[float]], SeriesForecastResponse]
QuantilesResponse = Union[list[list[list[float]]], SeriesForecastResponse]


class ErrorItem(BaseModel):
    loc: list[Union[str, int]] = Field(description="where in the request: e.g. ['body', 'context', 0, 5]")
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """Every error: a one-line summary naming the field, and FastAPI's usual ``detail`` list."""

    error: str
    detail: list[ErrorItem]


class ModelInfo(BaseModel):
    source: str
    version: str
    parameters: int
    device: str
    config: dict
    server: dict = Field(description="batching settings and request limits of this server")


class Health(BaseModel):
    status: str
    model: str = Field(description="loading | ready | failed")
    error: Optional[str] = None
