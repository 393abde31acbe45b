"""structlog setup: JSON lines when stderr is not a terminal, readable lines when it is.

Nothing here logs a token, a key value or a secret: the request log carries only the request ID,
route, status, duration, tenant and subject.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from ctrlplane.settings import Settings


def configure_logging(settings: Settings) -> None:
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    as_json = settings.log_format == "json" or (settings.log_format == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # The standard library's records (libraries': alembic, uvicorn's errors, the provider clients)
    # in the same lines, at the same level: this process's logging is set up here, once, not by
    # building the app (Litestar's own logging leaves the root logger alone: app.build_app).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    global _request_logger
    _request_logger = structlog.get_logger(REQUEST_LOGGER).bind()


REQUEST_LOGGER = "ctrlplane.http"
_request_logger: Any = None
_request_proxy = structlog.get_logger(REQUEST_LOGGER)


def request_logger() -> Any:
    """The logger of the request log line, which every request writes: bound once by
    ``configure_logging`` (``structlog.get_logger``'s lazy proxy builds a new logger on every call,
    a few microseconds a request), the proxy where this process never configured logging (tests
    that build the app in-process: pytest swaps the output streams from test to test, and only a
    logger built at the call finds the current one). ``structlog.testing.capture_logs`` reaches
    both: it swaps the processors inside the list the bound logger holds."""
    return _request_logger if _request_logger is not None else _request_proxy
