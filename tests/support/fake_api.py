"""The fake Gcore API (`exporter/demo/fake_gcore.py`) on a loopback port, and its key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp.test_utils import TestServer

from exporter.demo.fake_gcore import FakeGcore

API_KEY = "test-key-5f3a9c1e-SECRET"


@asynccontextmanager
async def serving_fake(fake: FakeGcore) -> AsyncIterator[str]:
    """`fake` on a port of 127.0.0.1 the OS picks; its base URL."""
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()
