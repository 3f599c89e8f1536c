"""The FastAPI application: routes, API key, limits, errors, model loading, MCP at /mcp.

``create_app(settings)`` builds the app; ``tirex serve`` runs it with uvicorn. The model loads in
the background when the server starts: /health answers at once, /ready and the forecast routes
answer 503 until the model is loaded and warmed up. With several worker processes on one port each
worker starts taking connections only once its model is ready.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from contextlib import asynccontextmanager
from typing import Annotated

import torch
from fastapi import APIRouter, Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic_core import to_json
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..cpus import limit_torch_threads
from .batching import Batcher, NotFinite, Overloaded
from .metrics import Metrics, MetricsMiddleware
from .prepare import Prepared, RequestError, prepare
from .schemas import ErrorResponse, ForecastRequest, Health, MeanResponse, ModelInfo, QuantilesResponse
from .settings import ServerSettings

log = logging.getLogger("uvicorn.error.tirex")  # printed like uvicorn's own lines

ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 413, 415, 422, 503, 504)}
HINTS = {
    "finite_number": " (JSON has no NaN or Infinity: send null for a missing value)",
    "float_type": " (send numbers; null for a missing value)",
    "extra_forbidden": " (unknown field)",
}


class ServerState:
    """The loaded model, its batcher and the metrics of one app."""

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.model = None
        self.batcher: Batcher | None = None
        self.status = "loading"
        self.error: str | None = None
        self.metrics = Metrics(queued_series=lambda: self.batcher.queued_rows if self.batcher else 0)

    async def load(self) -> None:
        """Load the model off the event loop, warm it up on the forecasting thread, then accept forecasts."""
        from .. import load_model

        s = self.settings
        try:
            if s.threads is not None:
                torch.set_num_threads(s.threads)
            else:  # torch's default, at most this worker's share of the CPUs it may use (tirex.cpus)
                limit_torch_threads(s.workers)
            model = await asyncio.to_thread(load_model, s.model, device=s.device)
            batcher = Batcher(model, s.batching, s.batch_window_ms / 1000, s.max_batch_series,
                              s.max_queue_series, on_batch=self.metrics.observe_batch)
            # the first forecast builds the CPU kernel (once per machine) and warms the caches
            await batcher.run_on_worker(model.forecast, torch.zeros(1, 2 * model.config.patch_size), 1)
            batcher.start()
            self.model, self.batcher, self.status = model, batcher, "ready"
            log.info("model %s loaded (%d parameters): POST /forecast/mean and /forecast/quantiles, MCP at /mcp, "
                     "docs at /docs", s.model or "bundled", model.num_parameters)
        except Exception as exc:
            self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"
            log.error("loading the model %s failed: %s", s.model or "bundled", self.error)

    async def forecast(self, prepared: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return await asyncio.wait_for(
                self.batcher.submit(prepared.series, prepared.prediction_length, prepared.quantile_levels,
                                    prepared.rollout_steps),
                self.settings.request_timeout_s,
            )
        except asyncio.TimeoutError:
            raise RequestError([], f"the forecast took longer than this server's request timeout "
                                   f"({self.settings.request_timeout_s:g} s); send fewer series or a shorter horizon",
                               status=504, kind="timeout") from None
        except Overloaded as exc:
            raise RequestError([], f"the server is busy: {exc}; retry shortly", status=503, kind="overloaded") from None
        except NotFinite as exc:
            raise RequestError(["context" if prepared.frame is None else "series"], str(exc)) from None


# -- dependencies -----------------------------------------------------------------------------------
async def get_state(request: Request) -> ServerState:
    return request.app.state.tirex


api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's API key")
bearer = HTTPBearer(auto_error=False, description="the server's API key as a bearer token")


def key_matches(settings: ServerSettings, presented: str | None) -> bool:
    return settings.api_key is None or (
        presented is not None and secrets.compare_digest(presented.encode(), settings.api_key.encode())
    )


async def require_api_key(
    state: Annotated[ServerState, Depends(get_state)],
    key: Annotated[str | None, Security(api_key_header)] = None,
    token: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None,
) -> None:
    """Every route but /health: ``X-API-Key: KEY`` or ``Authorization: Bearer KEY`` when a key is set."""
    if not key_matches(state.settings, key or (token.credentials if token else None)):
        raise RequestError(["header", "X-API-Key"], "missing or wrong API key (send X-API-Key: KEY or "
                                                    "Authorization: Bearer KEY)", status=401, kind="unauthorized")


async def ready_state(state: Annotated[ServerState, Depends(get_state)]) -> ServerState:
    if state.status != "ready":
        raise RequestError([], "the model is still loading; retry shortly" if state.status == "loading"
                           else f"the model failed to load: {state.error}", status=503, kind="not_ready")
    return state


async def prepared_request(body: ForecastRequest, state: Annotated[ServerState, Depends(ready_state)]) -> Prepared:
    """The body checked against the server's limits and the package's input layer."""
    return prepare(body, state.model, state.settings)


def json_response(content, status: int = 200) -> Response:
    return Response(to_json(content), status_code=status, media_type="application/json")


# -- routes -----------------------------------------------------------------------------------------
router = APIRouter(dependencies=[Depends(require_api_key)], responses=ERRORS)


@router.post("/forecast/mean", response_model=MeanResponse, summary="Point forecasts (the median)")
async def forecast_mean(prepared: Annotated[Prepared, Depends(prepared_request)],
                        state: Annotated[ServerState, Depends(get_state)]):
    """The reference server's body (``context``, ``prediction_length``) answers with one list of
    ``prediction_length`` medians per series; the rich form (``series``) with timestamped forecasts."""
    quantiles, mean = await state.forecast(prepared)
    return json_response(prepared.answer(quantiles, mean, with_quantiles=False))


@router.post("/forecast/quantiles", response_model=QuantilesResponse, summary="Quantile forecasts")
async def forecast_quantiles(prepared: Annotated[Prepared, Depends(prepared_request)],
                             state: Annotated[ServerState, Depends(get_state)]):
    """The reference body answers with (series, steps, levels) nested lists; the rich form with the
    mean and one list per level for each series."""
    quantiles, mean = await state.forecast(prepared)
    return json_response(prepared.answer(quantiles, mean, with_quantiles=True))


@router.get("/ready", response_model=Health, summary="Ready to forecast (model loaded)")
async def ready(state: Annotated[ServerState, Depends(get_state)]):
    ok = state.status == "ready"
    return json_response({"status": "ready" if ok else "not ready", "model": state.status, "error": state.error},
                         200 if ok else 503)


@router.get("/model", response_model=ModelInfo, summary="The served model")
async def model_info(state: Annotated[ServerState, Depends(ready_state)]):
    model = state.model
    config = {k: v for k, v in vars(model.config).items()}
    return json_response({
        "source": state.settings.model or "bundled default model",
        "version": __version__,
        "parameters": model.num_parameters,
        "device": str(next(model.parameters()).device),
        "config": config,
        "server": {k: v for k, v in state.settings.public().items() if k not in ("host", "port")},
    })


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: Annotated[ServerState, Depends(get_state)]):
    return Response(state.metrics.render(), media_type=state.metrics.content_type)


@router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request):
    return JSONResponse(request.app.openapi())


@router.get("/docs", include_in_schema=False)
async def docs():
    return get_swagger_ui_html(openapi_url="/openapi.json", title="tirex forecast server")


async def health(state: Annotated[ServerState, Depends(get_state)]):
    """Alive: answers while a batch runs and while the model loads; 503 only if loading failed."""
    return json_response({"status": "failed" if state.status == "failed" else "ok", "model": state.status,
                          "error": state.error}, 503 if state.status == "failed" else 200)


# -- errors -----------------------------------------------------------------------------------------
def _where(loc) -> str:
    parts = [str(p) for p in loc if p != "body"] or ["body"]
    out = parts[0]
    for p in parts[1:]:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


def error_response(status: int, items: list[dict]) -> JSONResponse:
    summary = "; ".join(f"{_where(i['loc'])}: {i['msg']}" if i["loc"] else i["msg"] for i in items[:5])
    if len(items) > 5:
        summary += f"; and {len(items) - 5} more"
    return JSONResponse({"error": summary, "detail": items}, status_code=status)


async def on_request_error(request: Request, exc: RequestError):
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    response = error_response(exc.status, [{"loc": exc.loc, "msg": exc.message, "type": exc.kind}])
    if exc.status == 503:
        response.headers["Retry-After"] = "1"
    if headers:
        response.headers.update(headers)
    return response


async def on_validation_error(request: Request, exc: RequestValidationError):
    items = []
    for e in exc.errors():
        loc = list(e["loc"])
        if e["type"] == "json_invalid":
            return error_response(400, [{"loc": ["body"], "type": "json_invalid",
                                         "msg": f"the body is not valid JSON: {e.get('ctx', {}).get('error', '')} "
                                                f"at character {loc[-1]}"}])
        if loc == ["body"] and e["type"] in ("model_attributes_type", "dict_type"):
            content_type = request.headers.get("content-type", "")
            if "json" not in content_type:
                return error_response(415, [{"loc": ["header", "content-type"], "type": "unsupported_media_type",
                                             "msg": f"send the body as JSON with Content-Type: application/json "
                                                    f"(got {content_type or 'none'!r})"}])
        if loc == ["body"] and e["type"] == "missing":
            items.append({"loc": loc, "msg": "the request needs a JSON body", "type": "missing"})
            continue
        msg = e["msg"].removeprefix("Value error, ") + HINTS.get(e["type"], "")
        items.append({"loc": loc, "msg": msg, "type": e["type"]})
    return error_response(422, items)


async def on_http_error(request: Request, exc: StarletteHTTPException):
    response = error_response(exc.status_code, [{"loc": [], "msg": str(exc.detail), "type": "http_error"}])
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def on_unexpected_error(request: Request, exc: Exception):
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, [{"loc": [], "msg": f"internal error ({type(exc).__name__}); see the server log",
                                 "type": "internal"}])


# -- body size --------------------------------------------------------------------------------------
class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, whether the client declares the length or not."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send, int(declared))
        chunks, size = [], 0
        while True:  # read the whole body (bounded) before the app sees it
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send, size)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send, size: int):
        response = error_response(413, [{"loc": ["body"], "type": "too_large",
                                         "msg": f"the body has {size} bytes or more; this server takes at most "
                                                f"{self.max_bytes}"}])
        await response(scope, receive, send)


class ApiKeyGuard:
    """The API key check for a mounted ASGI app (MCP), where FastAPI's dependencies do not run."""

    def __init__(self, app, settings: ServerSettings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = {k.decode().lower(): v.decode("latin-1") for k, v in scope["headers"]}
            presented = headers.get("x-api-key")
            auth = headers.get("authorization", "")
            if presented is None and auth.lower().startswith("bearer "):
                presented = auth[7:].strip()
            if not key_matches(self.settings, presented):
                response = error_response(401, [{"loc": ["header", "X-API-Key"], "type": "unauthorized",
                                                 "msg": "missing or wrong API key"}])
                response.headers["WWW-Authenticate"] = "Bearer"
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


# -- the app ----------------------------------------------------------------------------------------
def create_app(settings: ServerSettings | None = None) -> FastAPI:
    """The forecast server as an ASGI app (run it with uvicorn, or ``tirex serve``).

    Example:
        >>> app = create_app(ServerSettings(model="NX-AI/TiRex", api_key="secret"))
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    from .mcp_tool import build_mcp

    settings = (settings or ServerSettings()).validate()
    state = ServerState(settings)
    mcp = build_mcp(state)
    mcp_http = mcp.streamable_http_app(streamable_http_path="/mcp", stateless_http=True, json_response=True,
                                       host=settings.host, max_request_body_size=settings.max_body_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(state.load())
        if settings.workers > 1:
            # workers share one port: each takes connections only once its model is ready, so no request
            # meets a worker that is still loading while another one answers /ready
            await loading
        async with mcp.session_manager.run():
            yield
        await loading  # a shutdown during loading waits for it (the thread cannot be interrupted)
        if state.batcher is not None:
            await state.batcher.stop()

    app = FastAPI(title="tirex forecast server", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None,
                  description="Probabilistic forecasts with TiRex over HTTP (the reference server's API, "
                              "plus timestamped series) and MCP (`/mcp`, tool `forecast`).")
    app.state.tirex = state
    app.add_api_route("/health", health, methods=["GET"], response_model=Health, summary="Alive")
    app.include_router(router)
    for route in mcp_http.routes:  # the MCP endpoint, behind the same API key
        route.app = ApiKeyGuard(route.app, settings)
        app.router.routes.append(route)
    app.add_exception_handler(RequestError, on_request_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected_error)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)  # JSON 413s, for /mcp too
    routes = {"/health", "/ready", "/model", "/metrics", "/docs", "/openapi.json", "/forecast/mean",
              "/forecast/quantiles", "/mcp"}
    app.add_middleware(MetricsMiddleware, metrics=state.metrics, routes=routes)
    return app


def app_from_env() -> FastAPI:
    """uvicorn's factory for ``tirex serve`` (each worker process builds its app from the settings)."""
    return create_app(ServerSettings.from_env())
