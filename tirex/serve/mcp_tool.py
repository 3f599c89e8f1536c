"""The MCP endpoint (``/mcp``, streamable HTTP): one tool, ``forecast``, for AI assistants.

The tool takes the same arguments as the HTTP API's reference form for one series, goes through
the same validation and the same batcher, and answers with structured content (mean and quantiles).
"""

from __future__ import annotations

from typing import Optional

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field, ValidationError

from .. import __version__
from ..frames import level_name
from .prepare import RequestError, prepare
from .schemas import ForecastRequest


class ToolForecast(BaseModel):
    prediction_length: int
    quantile_levels: list[float]
    mean: list[float] = Field(description="point forecast (the median) for each future step")
    quantiles: dict[str, list[float]] = Field(description="one list per quantile level, keyed '0.1', ...")


def build_mcp(state) -> MCPServer:
    """An MCP server whose ``forecast`` tool answers from ``state``'s model and batcher."""
    mcp = MCPServer("tirex", version=__version__, log_level="WARNING",
                    instructions="Probabilistic time-series forecasts with TiRex: call `forecast` with the "
                                 "history of one series (oldest first) and the number of steps to predict.")

    @mcp.tool(name="forecast", title="Forecast a time series")
    async def forecast(
        context: list[Optional[float]],
        prediction_length: int = 32,
        quantile_levels: Optional[list[float]] = None,
    ) -> ToolForecast:
        """Forecast the next `prediction_length` values of one time series with TiRex.

        `context` holds the past values, oldest first (null for a missing value). Returns the median
        forecast (`mean`) and the requested quantiles (default 0.1 ... 0.9) for every future step.
        """
        if state.status != "ready":
            raise ToolError("the model is still loading; retry shortly" if state.status == "loading"
                            else f"the model failed to load: {state.error}")
        try:
            body = ForecastRequest.model_validate(
                {"context": [context], "prediction_length": prediction_length, "quantile_levels": quantile_levels})
            prepared = prepare(body, state.model, state.settings)
            quantiles, mean = await state.forecast(prepared)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ToolError(f"{where}: {first['msg']}") from None
        except RequestError as exc:
            where = ".".join(str(p) for p in exc.loc if p != "body") or "request"
            raise ToolError(f"{where}: {exc.message}") from None
        return ToolForecast(
            prediction_length=prepared.prediction_length,
            quantile_levels=list(prepared.quantile_levels),
            mean=mean[0].tolist(),
            quantiles={level_name(lv): quantiles[0, :, j].tolist() for j, lv in enumerate(prepared.quantile_levels)},
        )

    return mcp
