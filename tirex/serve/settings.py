"""The server's configuration: one dataclass, set from ``tirex serve`` options (or in Python)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

API_KEY_ENV = "TIREX_API_KEY"
SETTINGS_ENV = "TIREX_SERVE_SETTINGS"  # how `tirex serve` hands the settings to uvicorn's worker processes


@dataclass
class ServerSettings:
    """Everything ``tirex serve`` can set; the defaults are the command's defaults.

    Example:
        >>> app = create_app(ServerSettings(max_horizon=256, api_key="secret"))
    """

    model: str | None = None  # a load_model source; None = the bundled model
    device: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    threads: int | None = None  # torch threads per worker process (None = torch's default)
    api_key: str | None = None  # checked on every route but /health; None = open
    # dynamic batching
    batching: bool = True
    batch_window_ms: float = 5.0
    max_batch_series: int = 256
    max_queue_series: int = 8192
    # limits of one request
    max_series: int = 1024
    max_context_length: int = 100_000
    max_horizon: int = 1024
    max_quantile_levels: int = 99
    max_body_bytes: int = 16 * 2**20
    request_timeout_s: float = 30.0
    # shutdown: in-flight requests get this long to finish
    graceful_timeout_s: float = 30.0
    access_log: bool = False

    def validate(self) -> "ServerSettings":
        positive = ("port", "workers", "max_batch_series", "max_queue_series", "max_series", "max_context_length",
                    "max_horizon", "max_quantile_levels", "max_body_bytes", "request_timeout_s", "graceful_timeout_s")
        bad = [name for name in positive if not getattr(self, name) > 0]
        if self.threads is not None and self.threads <= 0:
            bad.append("threads")
        if self.batch_window_ms < 0:
            bad.append("batch_window_ms")
        if bad:
            raise ValueError(f"server settings must be positive: {', '.join(bad)}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the API key must not be empty")
        return self

    def public(self) -> dict:
        """The settings a client may see (/model): no API key."""
        out = dataclasses.asdict(self)
        out["api_key"] = self.api_key is not None
        return out

    def to_env(self) -> None:
        os.environ[SETTINGS_ENV] = json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_env(cls) -> "ServerSettings":
        raw = os.environ.get(SETTINGS_ENV)
        settings = cls(**json.loads(raw)) if raw else cls()
        if settings.api_key is None and os.environ.get(API_KEY_ENV):
            settings.api_key = os.environ[API_KEY_ENV]
        return settings.validate()
