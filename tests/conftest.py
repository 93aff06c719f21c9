"""Fixtures only: a clean environment, the fake Gcore API on loopback, an in-process exporter.
Helpers the tests share live in `tests/support/`."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from support.exporter import ExporterFactory, running_exporter
from support.fake_api import API_KEY, serving_fake

from exporter.demo.fake_gcore import FakeGcore


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        # the exporter follows proxy variables (trust_env): none may route the loopback tests
        if name.startswith("GCORE_") or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


@pytest.fixture
def fake() -> FakeGcore:
    return FakeGcore(api_key=API_KEY)


@pytest.fixture
async def fake_url(fake: FakeGcore) -> AsyncIterator[str]:
    async with serving_fake(fake) as url:
        yield url


@pytest.fixture
def exporter(fake_url: str, monkeypatch: pytest.MonkeyPatch) -> ExporterFactory:
    """`async with exporter(targets=[...], **settings) as running:` against `fake`, after its
    first round (see `support.exporter.running_exporter`)."""
    monkeypatch.setenv("GCORE_API_KEY", API_KEY)
    monkeypatch.setenv("GCORE_BASE_URL", fake_url)
    return running_exporter
