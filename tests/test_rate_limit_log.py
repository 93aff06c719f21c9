"""A `Retry-After` above the exporter's cap is logged once per pause, as Gcore sent it."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs
from support.clock import Clock
from support.fake_api import API_KEY

from exporter.demo.fake_gcore import FakeGcore
from exporter.gcore.client import GcoreClient
from exporter.gcore.transport import RateGate, RetryPolicy, Transport
from exporter.metrics.telemetry import Telemetry
from exporter.vocabulary import FetchError, ImageKey, Scope

KEYS = [ImageKey(Scope(2, 4), f"2a000000-0000-4000-8000-{n:012d}") for n in range(3)]


async def test_retry_after_above_the_cap_is_logged_once_per_pause(
    fake: FakeGcore, fake_url: str
) -> None:
    clock = Clock(0.0)
    fake.inject("/images/", 429, headers={"Retry-After": "3600"}, times=3)
    fake.inject("/images/", 429, headers={"Retry-After": "20"}, times=1)
    async with aiohttp.ClientSession() as session:
        client = GcoreClient(
            Transport(
                session,
                fake_url,
                SecretStr(API_KEY),
                timeout=5,
                concurrency=4,
                max_response_size=2**20,
                telemetry=Telemetry(),
                retry=RetryPolicy(attempts=1, max_pause=300),
                gate=RateGate(clock),
            )
        )
        with capture_logs() as logs:
            answers = await asyncio.gather(
                client.get_image(KEYS[0]), client.get_image(KEYS[1]), return_exceptions=True
            )
            assert all(isinstance(a, FetchError) for a in answers)  # two 429s, one pause
            assert client.gate.remaining == pytest.approx(300)
            clock.now += 301  # the pause is over; Gcore still asks for an hour
            with pytest.raises(FetchError):
                await client.get_image(KEYS[2])
            clock.now += 301
            with pytest.raises(FetchError):  # 20 s is within the cap: nothing to say
                await client.get_image(KEYS[2])
    warnings = [entry for entry in logs if entry["event"] == "Retry-After above the cap"]
    assert [(w["retry_after"], w["paused_for"]) for w in warnings] == [("3600", 300)] * 2
    assert all(w["log_level"] == "warning" for w in warnings)
