"""A minimal HTTP/1.1 server for tests (web services the switch calls, webhook receivers).

Independent of the switch's code: ``asyncio.start_server`` on 127.0.0.1, port 0. Every request
is recorded (method, path, headers, body); a handler decides the answer::

    async with TestHttpServer(lambda req: (200, {"destination": "+905321234567"})) as srv:
        url = srv.url("/lookup")
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class HttpRequest:
    """One request as received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    time: float = 0.0

    def json(self) -> Any:
        return json.loads(self.body)


Reply = tuple[int, Any] | tuple[int, Any, dict[str, str]]
Handler = Callable[[HttpRequest], Reply | Awaitable[Reply] | None]


@dataclass
class TestHttpServer:
    """Records requests and answers with ``handler(request)``: (status, json-able body[,
    headers]); ``None`` drops the connection without an answer."""

    handler: Handler = lambda req: (200, {})
    requests: list[HttpRequest] = field(default_factory=list)
    _server: asyncio.AbstractServer | None = None
    port: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    __test__ = False  # not a pytest test class

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> TestHttpServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def wait(self, count: int = 1, timeout: float = 10.0) -> list[HttpRequest]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.requests) < count:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"{len(self.requests)}/{count} HTTP requests in {timeout}s")
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except TimeoutError:
                pass
        return self.requests

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    h = (await reader.readline()).decode("latin-1").rstrip("\r\n")
                    if not h:
                        break
                    name, _, value = h.partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                request = HttpRequest(method, path, headers, body,
                                      asyncio.get_running_loop().time())
                self.requests.append(request)
                self.arrived.set()
                reply = self.handler(request)
                if asyncio.iscoroutine(reply) or isinstance(reply, Awaitable):
                    reply = await reply
                if reply is None:
                    return  # drop the connection
                status, payload = reply[0], reply[1]
                extra = reply[2] if len(reply) > 2 else {}  # type: ignore[misc]
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                head = [f"HTTP/1.1 {status} X", "Content-Type: application/json",
                        f"Content-Length: {len(data)}"]
                head += [f"{k}: {v}" for k, v in extra.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()
