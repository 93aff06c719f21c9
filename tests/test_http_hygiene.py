"""The HTTP server against rude clients: hang-ups, oversized headers, slow readers, idle sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler
from support.waiting import wait_until
from support.web import StaticSource, json_logs, serving, snapshot

from exporter.web.app import PIECE, create_app

BIG = b"gcore_gpu_image_up 1\n" * (1 << 20)  # 21 MiB: more than any socket buffers
IDLE = 0.5
REQUEST = b"GET /metrics HTTP/1.1\r\nHost: exporter\r\n\r\n"


def big_app(idle_timeout: float = 75.0) -> tuple[web.Application, list[asyncio.Transport]]:
    """An app serving BIG, and the transports of the scrapes it has begun."""
    app = create_app(StaticSource(snapshot(BIG)), idle_timeout=idle_timeout)
    transports: list[asyncio.Transport] = []

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        assert request.transport is not None
        transports.append(request.transport)
        return await handler(request)

    app.middlewares.append(record)
    return app, transports


@asynccontextmanager
async def connection(url: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw TCP connection, to send what no HTTP client library would."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 10)
    try:
        yield reader, writer
    finally:
        writer.close()


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 10) -> bool:
    """Whether the server closes the connection within `timeout` (what it sent is skipped)."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(1 << 16):
                pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


async def test_a_scraper_that_hangs_up_mid_body_costs_a_debug_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    app, _ = big_app()
    with json_logs(capsys) as logs:
        async with serving(app) as url:
            async with connection(url) as (reader, writer):
                writer.write(REQUEST)
                await reader.readexactly(1 << 16)  # mid-body; closing with unread data resets
            await wait_until(lambda: logs.has("the client went away"), what="the debug line")
        assert logs.at_least("warn") == []
        assert "Traceback" not in logs.text
        (line,) = [e for e in logs.events if "went away" in e["msg"]]
        assert line["level"] == "debug"
        assert 0 < line["sent"] < len(BIG) < line["size"]


async def test_oversized_request_headers_cost_a_debug_line_that_quotes_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    app, _ = big_app()
    secret = "Basic " + "c2VjcmV0" * 2000
    with json_logs(capsys) as logs:
        async with serving(app) as url, connection(url) as (reader, writer):
            writer.write(f"GET /metrics HTTP/1.1\r\nAuthorization: {secret}\r\n\r\n".encode())
            status_line = await asyncio.wait_for(reader.readline(), 10)
            assert status_line.startswith(b"HTTP/1.") and b" 400 " in status_line
            await wait_until(lambda: logs.has("bad request refused"), what="the debug line")
        assert logs.at_least("warn") == []
        assert "c2VjcmV0c2VjcmV0" not in logs.text
        assert "Traceback" not in logs.text


async def test_bodies_go_out_in_bounded_pieces_whatever_the_number_of_slow_scrapers() -> None:
    """Each connection holds at most a piece plus the transport's high-water mark, not a body."""
    app, transports = big_app()
    scrapers = 8
    async with serving(app) as url:
        async with asyncio.TaskGroup() as group:
            clients = [group.create_task(_stalled_client(url)) for _ in range(scrapers)]
        try:
            await wait_until(
                lambda: (
                    len(transports) == scrapers
                    and all(t.get_write_buffer_size() > 0 for t in transports)
                ),
                what="every scrape to fill its socket and wait",
            )
            buffered = [t.get_write_buffer_size() for t in transports]
            assert max(buffered) <= PIECE + 64 * 1024, buffered
        finally:
            for client in clients:
                client.result().close()


async def _stalled_client(url: str) -> socket.socket:
    """A client that asks for /metrics and reads nothing: its socket, for the caller to close."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, int(port)))
    await loop.sock_sendall(sock, REQUEST)
    return sock


async def test_a_scraper_that_stops_reading_is_cut_off_after_the_idle_timeout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    app, transports = big_app(idle_timeout=IDLE)
    with json_logs(capsys) as logs:
        async with serving(app) as url:
            sock = await _stalled_client(url)
            try:
                await wait_until(lambda: len(transports) == 1, what="the scrape")
                await wait_until(transports[0].is_closing, what="the server to cut it off")
            finally:
                sock.close()
        assert logs.has("the client stopped reading")
        assert logs.at_least("warn") == []


@pytest.mark.parametrize(
    "sent",
    [
        b"",
        b"GET /metrics HTTP/1.1\r\nHost: exporter\r\n",
        REQUEST.replace(b"/metrics", b"/healthz"),
    ],
    ids=["nothing", "headers-that-never-end", "idle-after-a-response"],
)
async def test_an_idle_connection_is_closed_after_the_idle_timeout(sent: bytes) -> None:
    app, _ = big_app(idle_timeout=IDLE)
    async with serving(app) as url, connection(url) as (reader, writer):
        writer.write(sent)
        assert await closed_by_server(reader), "the connection is still open"
