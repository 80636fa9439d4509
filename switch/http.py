"""HTTP endpoint (FastAPI) and an embeddable uvicorn server.

``create_app`` builds the application (``GET /healthz``); ``HttpServer`` runs it inside the
caller's already running event loop, without touching process signal handlers, so it can be
embedded next to the SIP stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Generator, Mapping

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

__all__ = ["HttpServer", "HttpServerError", "create_app"]

logger = logging.getLogger(__name__)

HealthCheck = Callable[[], Mapping[str, bool]]


def create_app(health: HealthCheck) -> FastAPI:
    """The HTTP application.

    Interactive API documentation is served at ``GET /docs`` (Swagger UI) and the OpenAPI
    schema at ``GET /openapi.json``; the routes come from :func:`switch.api.install_api`.
    ``GET /healthz`` calls ``health()`` (component name -> healthy) and answers
    200 ``{"status": "ok", "components": {...}}`` when every component is healthy, else 503
    ``{"status": "degraded", "components": {...}}``. A failing ``health()`` also gives 503.
    """
    app = FastAPI(
        title="softswitch",
        summary="Embeddable SIP softswitch: native call-control API",
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )

    # async so health() runs on the event loop thread, never in the threadpool.
    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        try:
            components = {str(name): bool(ok) for name, ok in health().items()}
        except Exception:
            logger.exception("health check failed")
            return JSONResponse({"status": "degraded", "components": {}}, status_code=503)
        healthy = all(components.values())
        return JSONResponse(
            {"status": "ok" if healthy else "degraded", "components": components},
            status_code=200 if healthy else 503,
        )

    return app


class HttpServerError(OSError):
    """The HTTP server could not start (for example: the port is already in use)."""


class _EmbeddedServer(uvicorn.Server):
    """uvicorn server that leaves signal handling to the embedding application."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn would replace SIGINT/SIGTERM handlers with signal.signal(); the host
        # application owns those, so do nothing here.
        yield


class HttpServer:
    """Runs an ASGI app with uvicorn as a task in the current event loop."""

    def __init__(self, *, access_log: bool = False, graceful_timeout: int = 5) -> None:
        self._access_log = access_log
        self._graceful_timeout = graceful_timeout
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._address: tuple[str, int] | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually listened on (port resolved when 0 was asked)."""
        if self._address is None:
            raise RuntimeError("HTTP server not started")
        return self._address

    async def start(self, app: object, host: str, port: int) -> None:
        """Listen on ``host:port`` and serve ``app``; returns once the server is accepting.

        Raises :class:`HttpServerError` if the address cannot be bound (port taken, ...).
        """
        if self._task is not None:
            raise RuntimeError("HTTP server already started")
        # Bind the socket ourselves: uvicorn would call sys.exit() on a bind failure.
        sock = _bind(host, port)
        bound = sock.getsockname()
        config = uvicorn.Config(
            app,  # type: ignore[arg-type]
            host=host,
            port=bound[1],
            log_config=None,
            access_log=self._access_log,
            lifespan="auto",
            timeout_graceful_shutdown=self._graceful_timeout,
        )
        server = _EmbeddedServer(config)
        self._server = server
        self._task = asyncio.create_task(self._serve(server, sock), name="http-server")
        while not server.started:
            if self._task.done():
                task, self._task, self._server = self._task, None, None
                sock.close()
                exc = task.exception()
                raise HttpServerError(f"HTTP server on {host}:{port} failed to start") from exc
            await asyncio.sleep(0.01)
        self._address = (host, int(bound[1]))
        logger.info("HTTP listening on http://%s:%d", _url_host(host), bound[1])

    @staticmethod
    async def _serve(server: _EmbeddedServer, sock: socket.socket) -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit as exc:
            # uvicorn exits the process on lifespan startup failure; turn it into an error.
            raise HttpServerError("HTTP application startup failed") from exc

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests (bounded), and wait for the server task."""
        server, task = self._server, self._task
        self._server = self._task = None
        self._address = None
        if server is None or task is None:
            return
        server.should_exit = True
        try:
            await task
        except HttpServerError:
            logger.exception("HTTP server ended with an error")


def _bind(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET
    try:
        # create_server sets SO_REUSEADDR (restart after TIME_WAIT) but an address that is
        # actively listened on still fails with EADDRINUSE.
        sock = socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise HttpServerError(f"cannot listen for HTTP on {host}:{port}: {reason}") from exc
    sock.setblocking(False)
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
