"""Egress through a forward proxy: the environment's (HTTP_PROXY, NO_PROXY) as every HTTP client
follows them, or `--proxy-url`; its credentials never shown. Against a real proxy on loopback."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import RawTestServer
from support.exporter import ExporterFactory
from support.exposition import value
from support.tooling import free_port

from exporter.config.settings import ConfigError, load_settings
from exporter.daemon.wiring import proxy_credentials
from exporter.demo.fake_gcore import FakeGcore, make_image
from exporter.logs import configure_logging

P, R = 3, 5
IMG = "c0ffee00-0000-4000-8000-0000000000aa"
PASSWORD = "pr0xy-pa55word-7c1d"
_HOP_BY_HOP = {"host", "proxy-authorization", "proxy-connection", "connection", "keep-alive"}


@dataclass
class ForwardProxy:
    """A plain-HTTP forward proxy: each request, in absolute form, is relayed and remembered."""

    url: str = ""
    seen: list[tuple[str, str | None]] = field(default_factory=list)  # target, Proxy-Authorization

    async def relay(self, request: web.BaseRequest) -> web.Response:
        assert request.raw_path.startswith("http://"), "not a proxy request (absolute form)"
        self.seen.append((request.raw_path, request.headers.get("Proxy-Authorization")))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(request.method, request.raw_path, headers=headers) as answer,
        ):
            body = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() != "transfer-encoding"}
            return web.Response(status=answer.status, body=body, headers=kept)


@pytest.fixture
async def proxy() -> AsyncIterator[ForwardProxy]:
    forward = ForwardProxy()
    server = RawTestServer(forward.relay, host="127.0.0.1")
    await server.start_server()
    forward.url = f"http://127.0.0.1:{server.port}"
    try:
        yield forward
    finally:
        await server.close()


@pytest.fixture(autouse=True)
def _image(fake: FakeGcore) -> None:
    fake.put_image(P, R, make_image(IMG, "behind-a-proxy"))


async def test_requests_go_through_the_environments_proxy(
    exporter: ExporterFactory,
    proxy: ForwardProxy,
    fake_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    async with exporter(targets=[f"{P}/{R}/{IMG}"]) as running:
        samples = await running.samples()
    assert value(samples, "gcore_gpu_image_up", image_id=IMG) == 1
    assert f"{fake_url}/cloud/v3/gpu/virtual/{P}/{R}/images/{IMG}" in {t for t, _ in proxy.seen}


async def test_no_proxy_bypasses_the_environments_proxy(
    exporter: ExporterFactory, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    async with exporter(targets=[f"{P}/{R}/{IMG}"]) as running:
        samples = await running.samples()
    assert value(samples, "gcore_gpu_image_up", image_id=IMG) == 1
    assert proxy.seen == []


async def test_proxy_url_is_used_without_the_environment_and_carries_its_credentials(
    exporter: ExporterFactory, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The configured proxy wins over the environment's (here one where nothing listens)."""
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    with_credentials = proxy.url.replace("http://", f"http://gpu-exporter:{PASSWORD}@")
    async with exporter(targets=[f"{P}/{R}/{IMG}"], proxy_url=with_credentials) as running:
        samples = await running.samples()
    assert value(samples, "gcore_gpu_image_up", image_id=IMG) == 1
    expected = "Basic " + base64.b64encode(f"gpu-exporter:{PASSWORD}".encode()).decode()
    assert proxy.seen
    assert {auth for _, auth in proxy.seen} == {expected}


def test_proxy_credentials_are_in_no_repr_description_or_config_error() -> None:
    url = f"http://gpu-exporter:{PASSWORD}@proxy.internal:3128"
    settings = load_settings(demo=True, proxy_url=url)
    shown = repr(settings) + str(settings) + json.dumps(settings.describe())
    assert PASSWORD not in shown
    assert settings.describe()["proxy_url"] == "http://****@proxy.internal:3128"
    with pytest.raises(ConfigError) as refused:
        load_settings(demo=True, proxy_url=url + "/path")
    assert refused.value.problems[0].startswith("proxy_url: a proxy URL has no path")
    assert PASSWORD not in str(refused.value)


@pytest.mark.parametrize(
    "bad",
    ["ftp://proxy:21", "proxy.internal:3128", "http://:3128", "http://proxy:99999"],
)
def test_a_proxy_url_that_is_no_http_proxy_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(demo=True, proxy_url=bad)
    assert len(refused.value.problems) == 1
    assert refused.value.problems[0].startswith("proxy_url: ")


def test_proxy_credentials_are_redacted_from_every_log_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The last line of defence: whatever prints a proxy's URL, its user and password go."""
    monkeypatch.setenv("HTTPS_PROXY", "http://env-user:env-s3cret-4d2f@egress:3128")
    settings = load_settings(demo=True, proxy_url=f"http://gpu%2Dexporter:{PASSWORD}@proxy:3128")
    configure_logging("info", "json", proxy_credentials(settings))
    try:
        structlog.get_logger("test").warning(
            "proxy",
            one=f"http://gpu%2Dexporter:{PASSWORD}@proxy:3128",
            other="http://env-user:env-s3cret-4d2f@egress:3128",
        )
        err = capsys.readouterr().err
    finally:
        structlog.reset_defaults()
    assert "proxy" in err
    assert PASSWORD not in err
    assert "env-s3cret-4d2f" not in err
