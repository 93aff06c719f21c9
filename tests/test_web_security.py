"""/metrics secured the ecosystem's way: real TLS with certificates made here, basic auth, rotation.

Every connection is a new one (`force_close`), so each request also proves what a handshake does.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
import yaml
from support.exporter import ExporterFactory
from support.exposition import parse_samples, value
from support.fake_api import API_KEY
from support.waiting import wait_until
from support.web import StaticSource, json_logs, snapshot
from support.web import serving as serving_app
from test_cli import env_for, is_ready, run, serving

from bench.pki import CertificateAuthority
from exporter.demo.fake_gcore import FakeGcore, make_image
from exporter.web.app import GUARD, create_app
from exporter.web.guard import RateLimiter, WebGuard

PASSWORD = "correct horse battery staple"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
TLS = {"cert_file": "server.crt", "key_file": "server.key"}
MTLS = {**TLS, "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": "ca.crt"}


def basic(user: str, password: str) -> dict[str, str]:
    """An `Authorization: Basic` header, as Prometheus' basic_auth sends it."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


ALICE = basic("alice", PASSWORD)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority()


@pytest.fixture(scope="module")
def rogue_ca() -> CertificateAuthority:
    return CertificateAuthority("rogue CA")


@pytest.fixture
def pki(tmp_path: Path, ca: CertificateAuthority, rogue_ca: CertificateAuthority) -> Path:
    """ca.crt (the client CA; trust.crt, what clients trust, starts as the same), server, client
    (SAN prometheus.example) and rogue (another CA's client)."""
    ca.write(tmp_path)
    ca.write(tmp_path, "trust")
    ca.issue("server one").write(tmp_path, "server")
    ca.issue("prometheus", client=True, dns=["prometheus.example"]).write(tmp_path, "client")
    rogue_ca.issue("prometheus", client=True, dns=["prometheus.example"]).write(tmp_path, "rogue")
    return tmp_path


def write_config(directory: Path, config: dict[str, Any]) -> Path:
    path = directory / "web.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def app_for(directory: Path, config: dict[str, Any], **options: Any) -> aiohttp.web.Application:
    guard = WebGuard.load(write_config(directory, config))
    return create_app(StaticSource(snapshot(b"gcore_gpu_image_up 1\n")), guard, **options)


def client_tls(pki: Path, cert: str | None = None, **settings: Any) -> ssl.SSLContext:
    """Trusts the server's CA, presents `cert` (client, rogue) if given, `settings` applied."""
    context = ssl.create_default_context(cafile=pki / "trust.crt")
    if cert is not None:
        context.load_cert_chain(pki / f"{cert}.crt", pki / f"{cert}.key")
    for name, setting in settings.items():
        setattr(context, name, setting)
    return context


async def get(
    url: str, tls: ssl.SSLContext | None = None, auth: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    """One request on a new connection: status, headers, body."""
    connector = aiohttp.TCPConnector(force_close=True, ssl=tls if tls is not None else True)
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as http,
        http.get(url, headers=auth) as response,
    ):
        return response.status, dict(response.headers), await response.text()


async def server_name(url: str, tls: ssl.SSLContext) -> str:
    """The common name of the certificate the server presents to a new connection."""
    host, port = url.removeprefix("https://").split(":")
    _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port), ssl=tls), 10)
    try:
        peer = writer.get_extra_info("peercert")
        return str(dict(item[0] for item in peer["subject"])["commonName"])
    finally:
        writer.close()


@asynccontextmanager
async def served(app: aiohttp.web.Application) -> AsyncIterator[str]:
    async with serving_app(app) as url:
        yield url


# --- TLS ---------------------------------------------------------------------------------------


async def test_tls_serves_metrics_with_the_configured_certificate(pki: Path) -> None:
    async with served(app_for(pki, {"tls_server_config": TLS})) as url:
        assert url.startswith("https://")
        status, _, body = await get(url + "/metrics", client_tls(pki))
        assert (status, "gcore_gpu_image_up 1" in body) == (200, True)
        assert await server_name(url, client_tls(pki)) == "server one"


async def test_plain_http_on_the_tls_port_is_refused(pki: Path) -> None:
    async with served(app_for(pki, {"tls_server_config": TLS})) as url:
        with pytest.raises(aiohttp.ClientError):
            await get(url.replace("https://", "http://") + "/metrics")


@pytest.mark.parametrize(("cert", "accepted"), [("client", True), (None, False), ("rogue", False)])
async def test_require_and_verify_client_cert(pki: Path, cert: str | None, accepted: bool) -> None:
    async with served(app_for(pki, {"tls_server_config": MTLS})) as url:
        if accepted:
            assert (await get(url + "/metrics", client_tls(pki, cert)))[0] == 200
        else:
            with pytest.raises(aiohttp.ClientError):
                await get(url + "/metrics", client_tls(pki, cert))


@pytest.mark.parametrize(("cert", "accepted"), [("client", True), (None, True), ("rogue", False)])
async def test_verify_client_cert_if_given(pki: Path, cert: str | None, accepted: bool) -> None:
    config = {"tls_server_config": {**MTLS, "client_auth_type": "VerifyClientCertIfGiven"}}
    async with served(app_for(pki, config)) as url:
        if accepted:
            assert (await get(url + "/metrics", client_tls(pki, cert)))[0] == 200
        else:
            with pytest.raises(aiohttp.ClientError):
                await get(url + "/metrics", client_tls(pki, cert))


@pytest.mark.parametrize(
    ("allowed", "status"),
    [
        (["prometheus.example"], 200),
        (["spiffe://cluster/sa/prometheus", "prometheus.example"], 200),
        (["other.example"], 403),
    ],
)
async def test_client_allowed_sans(pki: Path, allowed: list[str], status: int) -> None:
    config = {"tls_server_config": {**MTLS, "client_allowed_sans": allowed}}
    async with served(app_for(pki, config)) as url:
        code, headers, _ = await get(url + "/metrics", client_tls(pki, "client"))
        assert code == status
        if status == 403:
            assert headers["Connection"] == "close"


async def test_min_version_is_honoured(pki: Path) -> None:
    config = {"tls_server_config": {**TLS, "min_version": "TLS13"}}
    async with served(app_for(pki, config)) as url:
        assert (await get(url + "/metrics", client_tls(pki)))[0] == 200
        old = client_tls(pki, maximum_version=ssl.TLSVersion.TLSv1_2)
        with pytest.raises(aiohttp.ClientError):
            await get(url + "/metrics", old)


async def test_cipher_suites_are_honoured(pki: Path) -> None:
    suite = "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
    config = {"tls_server_config": {**TLS, "max_version": "TLS12", "cipher_suites": [suite]}}

    def offering(cipher: str) -> ssl.SSLContext:
        context = client_tls(pki)
        context.set_ciphers(cipher)
        return context

    async with served(app_for(pki, config)) as url:
        assert (await get(url + "/metrics", offering("ECDHE-ECDSA-AES128-GCM-SHA256")))[0] == 200
        with pytest.raises(aiohttp.ClientError):
            await get(url + "/metrics", offering("ECDHE-ECDSA-AES256-GCM-SHA384"))


async def test_curve_preferences_are_honoured(pki: Path) -> None:
    config = {"tls_server_config": {**TLS, "curve_preferences": ["CurveP384"]}}

    def offering(curve: str) -> ssl.SSLContext:
        context = client_tls(pki)
        context.set_ecdh_curve(curve)
        return context

    async with served(app_for(pki, config)) as url:
        assert (await get(url + "/metrics", offering("secp384r1")))[0] == 200
        with pytest.raises(aiohttp.ClientError):
            await get(url + "/metrics", offering("prime256v1"))


# --- basic auth, headers, rate limit -----------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [
        None,
        basic("alice", "wrong"),
        basic("mallory", PASSWORD),
        basic("alice", PASSWORD + "x" * 80),  # past bcrypt's 72 bytes
    ],
    ids=["none", "wrong-password", "unknown-user", "too-long"],
)
async def test_basic_auth_refuses_with_401_and_www_authenticate(
    tmp_path: Path, auth: dict[str, str] | None
) -> None:
    async with served(app_for(tmp_path, {"basic_auth_users": {"alice": HASH}})) as url:
        status, headers, _ = await get(url + "/metrics", auth=auth)
        assert (status, headers.get("WWW-Authenticate")) == (401, "Basic")
        assert (await get(url + "/metrics", auth=ALICE))[0] == 200


@pytest.mark.parametrize("header", ["Bearer abc", "Basic !!!", "Basic YWxpY2U=", "Basic", "basic"])
async def test_malformed_authorization_headers_are_refused(tmp_path: Path, header: str) -> None:
    async with (
        served(app_for(tmp_path, {"basic_auth_users": {"alice": HASH}})) as url,
        aiohttp.ClientSession() as http,
        http.get(url + "/metrics", headers={"Authorization": header}) as response,
    ):
        assert response.status == 401


async def test_a_tls_file_with_users_needs_both(pki: Path) -> None:
    config = {"tls_server_config": TLS, "basic_auth_users": {"alice": HASH}}
    async with served(app_for(pki, config)) as url:
        assert (await get(url + "/metrics", client_tls(pki)))[0] == 401
        assert (await get(url + "/metrics", client_tls(pki), ALICE))[0] == 200


@pytest.mark.parametrize(("protect", "status"), [(False, 200), (True, 401)])
async def test_probes_are_open_unless_protected(tmp_path: Path, protect: bool, status: int) -> None:
    app = app_for(tmp_path, {"basic_auth_users": {"alice": HASH}}, protect_probes=protect)
    async with served(app) as url:
        for path in ("/healthz", "/readyz"):
            assert (await get(url + path))[0] == status
            assert (await get(url + path, auth=ALICE))[0] == 200
        assert (await get(url + "/"))[0] == 401  # the landing page is not a probe


async def test_a_verified_password_is_remembered_and_a_wrong_one_never(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        checks.append(password)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    app = app_for(tmp_path, {"basic_auth_users": {"alice": HASH}})
    async with served(app) as url:
        for _ in range(3):
            assert (await get(url + "/metrics", auth=ALICE))[0] == 200
        assert len(checks) == 1
        for _ in range(2):
            assert (await get(url + "/metrics", auth=basic("alice", "no")))[0] == 401
        assert (await get(url + "/metrics", auth=basic("eve", "no")))[0] == 401
        assert len(checks) == 4  # failures and unknown users cost a bcrypt check every time
    auth = app[GUARD].access.auth
    assert auth is not None
    assert not _holds(vars(auth), PASSWORD.encode()), "the password is kept in clear"


def _holds(value: object, secret: bytes) -> bool:
    if isinstance(value, bytes | str):
        return secret in (value.encode() if isinstance(value, str) else value)
    if isinstance(value, dict):
        return any(_holds(k, secret) or _holds(v, secret) for k, v in value.items())
    return False


async def test_bcrypt_runs_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = threading.Event(), threading.Event()
    released: list[bool] = []
    real = bcrypt.checkpw

    def slow(password: bytes, hashed: bytes) -> bool:
        entered.set()
        released.append(release.wait(timeout=5))  # times out if the loop is stuck in here
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", slow)
    async with served(app_for(tmp_path, {"basic_auth_users": {"alice": HASH}})) as url:
        scrape = asyncio.create_task(get(url + "/metrics", auth=ALICE))
        await wait_until(entered.is_set, timeout=5, what="the bcrypt check to start")
        assert (await get(url + "/healthz"))[0] == 200  # served while bcrypt runs
        release.set()
        assert (await scrape)[0] == 200
    assert released == [True]


async def test_configured_headers_are_on_every_response(tmp_path: Path) -> None:
    headers = {"X-Frame-Options": "deny", "Content-Security-Policy": "default-src 'none'"}
    config = {"http_server_config": {"headers": headers}, "basic_auth_users": {"alice": HASH}}
    async with served(app_for(tmp_path, config)) as url:
        for path, auth in (("/metrics", ALICE), ("/healthz", None), ("/metrics", None)):
            _, got, _ = await get(url + path, auth=auth)
            assert {name: got.get(name) for name in headers} == headers, path


async def test_rate_limit_answers_429_past_the_burst_and_spares_the_probes(tmp_path: Path) -> None:
    async with served(app_for(tmp_path, {"rate_limit": {"interval": "1h", "burst": 2}})) as url:
        statuses = [(await get(url + "/metrics"))[0] for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert (await get(url + "/healthz"))[0] == 200


def test_the_rate_limit_refills_one_request_per_interval() -> None:
    now = [0.0]
    limiter = RateLimiter(10.0, 2, clock=lambda: now[0])
    assert [limiter.allow() for _ in range(3)] == [True, True, False]
    now[0] = 9.0
    assert not limiter.allow()
    now[0] = 10.0
    assert [limiter.allow(), limiter.allow()] == [True, False]
    now[0] = 1000.0  # a long quiet spell refills the burst, no more
    assert [limiter.allow() for _ in range(3)] == [True, True, False]


# --- rotation without a restart ----------------------------------------------------------------


async def test_a_new_certificate_is_served_without_a_restart(
    pki: Path, ca: CertificateAuthority
) -> None:
    async with served(app_for(pki, {"tls_server_config": TLS})) as url:
        assert await server_name(url, client_tls(pki)) == "server one"
        ca.issue("the second server").write(pki, "server")
        assert await server_name(url, client_tls(pki)) == "the second server"


async def test_a_new_client_ca_replaces_the_old_one(
    pki: Path, rogue_ca: CertificateAuthority
) -> None:
    async with served(app_for(pki, {"tls_server_config": MTLS})) as url:
        assert (await get(url + "/metrics", client_tls(pki, "client")))[0] == 200
        with pytest.raises(aiohttp.ClientError):
            await get(url + "/metrics", client_tls(pki, "rogue"))
        (pki / "ca.crt").write_bytes(rogue_ca.cert_pem)
        assert (await get(url + "/metrics", client_tls(pki, "rogue")))[0] == 200
        with pytest.raises(aiohttp.ClientError):
            await get(url + "/metrics", client_tls(pki, "client"))


async def test_users_are_re_read_when_the_file_changes(tmp_path: Path) -> None:
    bob = basic("bob", "hunter2")
    async with served(app_for(tmp_path, {"basic_auth_users": {"alice": HASH}})) as url:
        assert (await get(url + "/metrics", auth=ALICE))[0] == 200
        bob_hash = bcrypt.hashpw(b"hunter2", bcrypt.gensalt(4)).decode()
        write_config(tmp_path, {"basic_auth_users": {"bob": bob_hash}})
        assert (await get(url + "/metrics", auth=ALICE))[0] == 401
        assert (await get(url + "/metrics", auth=bob))[0] == 200


async def test_a_broken_rotation_keeps_the_previous_config_and_says_so_once(
    pki: Path, ca: CertificateAuthority, capsys: pytest.CaptureFixture[str]
) -> None:
    with json_logs(capsys, "info") as logs:
        async with served(app_for(pki, {"tls_server_config": TLS})) as url:
            (pki / "server.crt").write_text("half a certificate")
            for _ in range(3):
                assert await server_name(url, client_tls(pki)) == "server one"
            errors = logs.at_least("error")
            assert len(errors) == 1, errors
            assert "not a PEM certificate" in errors[0]["problem"]
            ca.issue("fixed server").write(pki, "server")
            assert await server_name(url, client_tls(pki)) == "fixed server"
            assert logs.has("web config reloaded")


async def test_settings_fixed_at_startup_wait_for_a_restart_and_say_so(
    pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with json_logs(capsys, "info") as logs:
        async with served(app_for(pki, {"tls_server_config": TLS})) as url:
            write_config(pki, {"tls_server_config": {**TLS, "min_version": "TLS13"}})
            old = client_tls(pki, maximum_version=ssl.TLSVersion.TLSv1_2)
            assert (await get(url + "/metrics", old))[0] == 200
            assert logs.has("change at restart")
            write_config(pki, {})
            assert (await get(url + "/metrics", client_tls(pki)))[0] == 200
            assert logs.has("TLS is only turned on or off at restart")


# --- wiring: the daemon and the command line ---------------------------------------------------


async def test_the_daemon_loads_the_settings_web_config(
    fake: FakeGcore, exporter: ExporterFactory, tmp_path: Path
) -> None:
    fake.put_image(3, 5, make_image("c0ffee00-0000-4000-8000-000000000001", "gpu"))
    path = write_config(tmp_path, {"basic_auth_users": {"alice": HASH}})
    async with exporter(targets=["3/5"], web_config_file=str(path)) as running:
        async with running.http.get(running.url + "/metrics") as response:
            assert response.status == 401
        async with running.http.get(running.url + "/metrics", headers=ALICE) as response:
            assert response.status == 200


async def test_the_command_line_serves_tls_and_basic_auth(
    fake: FakeGcore, fake_url: str, pki: Path
) -> None:
    image = "c0ffee00-0000-4000-8000-000000000001"
    fake.put_image(3, 5, make_image(image, "gpu"))
    path = write_config(pki, {"tls_server_config": TLS, "basic_auth_users": {"alice": HASH}})
    args = ["--target", f"3/5/{image}", "--web-config-file", str(path)]
    async with serving(*args, env=env_for(fake_url)) as (_, url):
        url = url.replace("http://", "https://")
        connector = aiohttp.TCPConnector(ssl=client_tls(pki))
        async with aiohttp.ClientSession(connector=connector) as http:
            await wait_until(lambda: is_ready(http, url), timeout=15, what="readiness over TLS")
            async with http.get(url + "/metrics") as response:
                assert response.status == 401
            async with http.get(url + "/metrics", headers=ALICE) as response:
                samples = parse_samples(await response.text())
    assert value(samples, "gcore_gpu_image_up", image_id=image) == 1


async def test_check_config_validates_the_web_config(pki: Path) -> None:
    good = write_config(pki, {"tls_server_config": MTLS, "basic_auth_users": {"alice": HASH}})
    env = env_for("https://api.gcore.com", GCORE_EXPORTER_WEB_CONFIG_FILE=str(good))
    code, out, err = await run("--check-config", "--target", "1/2", env=env)
    assert code == 0, err
    assert '"client_auth_type": "RequireAndVerifyClientCert"' in out
    assert '"alice"' in out
    assert HASH not in out
    bad = pki / "bad.yml"
    bad.write_text(
        "tls_server_config:\n  min_version: TLS9\nbasic_auth_users:\n  bob: plain-pw\nextra: 1\n"
    )
    code, out, err = await run("--check-config", "--target", "1/2", "--web-config-file", str(bad))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 3, lines
    assert all(
        line.startswith("gcore-gpu-image-exporter: config error: web config") for line in lines
    )
    assert "plain-pw" not in err
    assert API_KEY not in out + err
