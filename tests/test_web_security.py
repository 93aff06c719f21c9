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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.exporter import ExporterFactory
from support.exposition import parse_samples, value
from support.fake_api import API_KEY
from support.waiting import wait_until
from support.web import StaticSource, json_logs, snapshot
from support.web import serving as serving_app
from test_cli import env_for, is_ready, run, serving

from bench.pki import CertificateAuthority
from exporter.config.settings import ConfigError
from exporter.demo.fake_gcore import FakeGcore, make_image
from exporter.web.app import GUARD, create_app
from exporter.web.basic_auth import FAILURE_MEMORY, MAX_CHECKS, BasicAuth, Verdict
from exporter.web.config_file import as_sent
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
LONG = bytes(range(33, 105))  # 72 bytes
LONG_HASH = bcrypt.hashpw(LONG, bcrypt.gensalt(4)).decode()


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
        basic("alice", PASSWORD + "x" * 80),  # its first 72 bytes are not the password
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


async def test_a_verified_password_is_remembered_and_a_wrong_one_briefly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = counting_bcrypt(monkeypatch)
    app = app_for(tmp_path, {"basic_auth_users": {"alice": HASH}})
    async with served(app) as url:
        for _ in range(3):
            assert (await get(url + "/metrics", auth=ALICE))[0] == 200
        assert len(checks) == 1
        for _ in range(2):
            assert (await get(url + "/metrics", auth=basic("alice", "no")))[0] == 401
            assert (await get(url + "/metrics", auth=basic("eve", "no")))[0] == 401
        assert len(checks) == 3  # a refusal is remembered: the same wrong password costs no bcrypt
        assert (await get(url + "/metrics", auth=basic("alice", "no!")))[0] == 401
        assert len(checks) == 4  # but every new guess costs a full check
    auth = app[GUARD].access.auth
    assert auth is not None
    assert not _holds(vars(auth), PASSWORD.encode()), "the password is kept in clear"
    assert not _holds(vars(auth), b"no!"), "a wrong password is kept in clear"


def counting_bcrypt(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The passwords bcrypt is asked to check, in order."""
    checks: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        checks.append(password)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    return checks


async def test_a_refusal_is_forgotten_after_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    checks = counting_bcrypt(monkeypatch)
    now = [0.0]
    auth = BasicAuth({"alice": HASH}, clock=lambda: now[0])
    wrong = basic("alice", "no")["Authorization"]
    assert await auth.check(wrong) is Verdict.REFUSED
    now[0] = FAILURE_MEMORY
    assert await auth.check(wrong) is Verdict.REFUSED
    assert len(checks) == 1
    now[0] = FAILURE_MEMORY + 0.1
    assert await auth.check(wrong) is Verdict.REFUSED
    assert len(checks) == 2


async def test_refusals_remembered_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    checks = counting_bcrypt(monkeypatch)
    monkeypatch.setattr("exporter.web.basic_auth.MAX_FAILURES", 2)
    auth = BasicAuth({"alice": bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()})
    guesses = [basic("alice", guess)["Authorization"] for guess in ("a", "b", "c")]
    for guess in (*guesses, guesses[2], guesses[0]):
        assert await auth.check(guess) is Verdict.REFUSED
    assert checks == [b"a", b"b", b"c", b"a"]  # "a", the oldest, was forgotten for "c"


@pytest.mark.parametrize(
    ("sent", "status"),
    [(LONG, 200), (LONG + b"-anything-after", 200), (LONG[:71] + b"!" + b"tail", 401)],
    ids=["72-bytes", "longer-first-72-match", "differs-within-72"],
)
async def test_bcrypt_compares_the_first_72_bytes_as_go(
    tmp_path: Path, sent: bytes, status: int
) -> None:
    token = base64.b64encode(b"alice:" + sent).decode()
    async with served(app_for(tmp_path, {"basic_auth_users": {"alice": LONG_HASH}})) as url:
        assert (await get(url + "/metrics", auth={"Authorization": f"Basic {token}"}))[0] == status


async def test_a_hash_bcrypt_cannot_read_refuses_and_never_fails(tmp_path: Path) -> None:
    unreadable = "$2y$04$" + "z" * 53  # the format, but a salt outside bcrypt's alphabet
    async with served(app_for(tmp_path, {"basic_auth_users": {"alice": unreadable}})) as url:
        assert (await get(url + "/metrics", auth=ALICE))[0] == 401


async def test_a_flood_of_guesses_waits_in_a_bounded_queue_and_probes_never_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_CHECKS distinct checks waiting, 429 at once; probes and remembered users pass."""
    app = app_for(tmp_path, {"basic_auth_users": {"alice": HASH}})
    async with served(app) as url:
        assert (await get(url + "/metrics", auth=ALICE))[0] == 200  # remembered from now on
        release = threading.Event()
        real = bcrypt.checkpw
        monkeypatch.setattr(bcrypt, "checkpw", lambda p, h: release.wait(timeout=10) and real(p, h))
        guesses = [
            asyncio.create_task(get(url + "/metrics", auth=basic("alice", f"guess {n}")))
            for n in range(MAX_CHECKS)
        ]
        same = asyncio.create_task(get(url + "/metrics", auth=basic("alice", "guess 0")))
        auth = app[GUARD].access.auth
        assert auth is not None
        await wait_until(lambda: auth.checks_waiting == MAX_CHECKS, timeout=10, what="a full queue")
        busy = [await get(url + "/metrics", auth=basic("alice", "one guess too many"))]
        assert busy[0][0] == 429
        assert busy[0][1]["Retry-After"] == "1"
        assert (await get(url + "/healthz"))[0] == 200
        assert (await get(url + "/metrics", auth=ALICE))[0] == 200
        assert not any(task.done() for task in (*guesses, same))
        release.set()
        assert [(await task)[0] for task in (*guesses, same)] == [401] * (MAX_CHECKS + 1)


async def test_identical_credentials_at_once_share_one_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entered, release = threading.Event(), threading.Event()
    checks = counting_bcrypt(monkeypatch)
    counted = bcrypt.checkpw

    def slow(password: bytes, hashed: bytes) -> bool:
        entered.set()
        release.wait(timeout=10)
        return counted(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", slow)
    auth, arrived = BasicAuth({"alice": HASH}), []

    async def check() -> Verdict:
        arrived.append(True)  # `check` then runs without a pause until it waits on bcrypt
        return await auth.check(ALICE["Authorization"])

    first = asyncio.create_task(check())
    await wait_until(entered.is_set, timeout=5, what="the bcrypt check to start")
    others = [asyncio.create_task(check()) for _ in range(3)]
    await wait_until(lambda: len(arrived) == 4, timeout=5, what="all four to wait")
    release.set()
    assert await asyncio.gather(first, *others) == [Verdict.ALLOWED] * 4
    assert len(checks) == 1  # one check, shared, and remembered


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


async def test_a_hostile_edit_is_refused_and_the_old_config_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with json_logs(capsys, "info") as logs:
        async with served(app_for(tmp_path, {"basic_auth_users": {"alice": HASH}})) as url:
            (tmp_path / "web.yml").write_text("a: " + "[" * 20_000 + "]" * 20_000)
            assert (await get(url + "/metrics", auth=ALICE))[0] == 200
            assert (await get(url + "/metrics"))[0] == 401
            (error,) = logs.at_least("error")
            assert error["msg"] == "web config refused, the previous one stays in force"
            assert error["problem"].endswith("nested more than 64 levels deep")
            assert "Traceback" not in logs.text


async def test_a_config_waiting_for_its_files_applies_when_they_appear(
    pki: Path, ca: CertificateAuthority, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ConfigMap naming a Secret's files that arrive later (toolkit: read at each handshake)."""
    with json_logs(capsys, "info") as logs:
        async with served(app_for(pki, {"tls_server_config": TLS})) as url:
            write_config(
                pki, {"tls_server_config": {"cert_file": "new.crt", "key_file": "new.key"}}
            )
            assert await server_name(url, client_tls(pki)) == "server one"
            assert "new.crt" in logs.at_least("error")[0]["problem"]
            ca.issue("the new server").write(pki, "new")
            assert await server_name(url, client_tls(pki)) == "the new server"
            assert logs.has("web config reloaded")


async def test_a_refused_config_is_retried_when_a_file_it_names_is_fixed(
    pki: Path, ca: CertificateAuthority
) -> None:
    async with served(app_for(pki, {"tls_server_config": TLS})) as url:
        ca.issue("a second server").write(pki, "second")
        (pki / "second.key").write_text("not yet")
        write_config(
            pki, {"tls_server_config": {"cert_file": "second.crt", "key_file": "second.key"}}
        )
        assert await server_name(url, client_tls(pki)) == "server one"
        ca.issue("a third server").write(pki, "second")
        assert await server_name(url, client_tls(pki)) == "a third server"


async def refused(url: str, tls: ssl.SSLContext) -> bool:
    try:
        await get(url + "/metrics", tls)
    except aiohttp.ClientError:
        return True
    return False


@pytest.mark.parametrize(
    ("before", "after"), [(MTLS, TLS), (TLS, MTLS)], ids=["mutual-tls-off", "mutual-tls-on"]
)
async def test_a_client_certificate_policy_edit_applies_whole_at_restart(
    pki: Path,
    ca: CertificateAuthority,
    capsys: pytest.CaptureFixture[str],
    before: dict[str, str],
    after: dict[str, str],
) -> None:
    """Never the old policy with the new files: until a restart the old config stays, whole."""
    users = {"basic_auth_users": {"alice": HASH}}
    with_cert, without = client_tls(pki, "client"), client_tls(pki)
    with json_logs(capsys, "info") as logs:
        async with served(app_for(pki, {"tls_server_config": before})) as url:
            ca.issue("server two").write(pki, "two")
            edit = {"tls_server_config": {**after, "cert_file": "two.crt", "key_file": "two.key"}}
            write_config(pki, {**edit, **users})
            assert (await get(url + "/metrics", with_cert))[0] == 200  # no one locked out
            assert await refused(url, without) == (before is MTLS)  # the old policy, whole...
            assert await server_name(url, with_cert) == "server one"  # ...with the old files
            (error,) = logs.at_least("error")
            assert error["msg"].startswith("web config waits for a restart")
            assert error["changed"] == ["client_auth_type"]
        async with served(app_for(pki, {**edit, **users})) as url:  # the restart
            assert await refused(url, without) == (after is MTLS)
            assert (await get(url + "/metrics", with_cert))[0] == 401  # the users, applied too
            assert (await get(url + "/metrics", with_cert, ALICE))[0] == 200
            assert await server_name(url, with_cert) == "server two"


async def test_turning_tls_off_waits_for_a_restart(
    pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with json_logs(capsys, "info") as logs:
        async with served(app_for(pki, {"tls_server_config": MTLS})) as url:
            write_config(pki, {})
            assert (await get(url + "/metrics", client_tls(pki, "client")))[0] == 200
            assert logs.at_least("error")[0]["changed"] == ["TLS"]


async def test_back_to_the_running_policy_applies_at_once(
    pki: Path, ca: CertificateAuthority
) -> None:
    async with served(app_for(pki, {"tls_server_config": TLS})) as url:
        write_config(pki, {"tls_server_config": {**TLS, "min_version": "TLS13"}})
        old = client_tls(pki, maximum_version=ssl.TLSVersion.TLSv1_2)
        assert (await get(url + "/metrics", old))[0] == 200
        ca.issue("rotated").write(pki, "server")
        assert await server_name(url, client_tls(pki)) == "server one"  # the edit waits, whole
        write_config(pki, {"tls_server_config": TLS})
        assert await server_name(url, client_tls(pki)) == "rotated"


# --- header values -----------------------------------------------------------------------------


async def test_a_folded_block_header_is_sent_and_every_path_answers(tmp_path: Path) -> None:
    """A YAML `>` block ends in a newline: Go writes it as a space and trims it; so do we."""
    config = (
        "http_server_config:\n  headers:\n    Content-Security-Policy: >\n"
        "      default-src 'self';\n      img-src 'self'\n"
    )
    (tmp_path / "web.yml").write_text(config)
    app = create_app(StaticSource(snapshot(b"up 1\n")), WebGuard.load(tmp_path / "web.yml"))
    async with served(app) as url:
        for path in ("/healthz", "/readyz", "/metrics", "/"):
            status, headers, _ = await get(url + path)
            assert status == 200
            assert headers["Content-Security-Policy"] == "default-src 'self'; img-src 'self'"


async def test_a_header_edit_with_a_control_character_is_refused_and_the_old_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with json_logs(capsys, "info") as logs:
        config = {"http_server_config": {"headers": {"X-XSS-Protection": "0"}}}
        async with served(app_for(tmp_path, config)) as url:
            write_config(
                tmp_path, {"http_server_config": {"headers": {"X-XSS-Protection": "\x01"}}}
            )
            status, headers, _ = await get(url + "/healthz")
            assert (status, headers["X-XSS-Protection"]) == (200, "0")
            assert "control character U+0001" in logs.at_least("error")[0]["problem"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=st.text(st.characters(exclude_categories=()), max_size=12))
async def test_any_header_value_is_refused_at_load_or_answered(tmp_path: Path, value: str) -> None:
    """Whatever the file says, the server never answers nothing."""
    config = {"http_server_config": {"headers": {"Content-Security-Policy": value}}}
    path = write_config(tmp_path, config)
    try:
        guard = WebGuard.load(path)
    except ConfigError as exc:
        (line,) = exc.problems
        assert "Content-Security-Policy holds the control character" in line
        return
    async with served(create_app(StaticSource(snapshot()), guard)) as url:
        status, headers, _ = await get(url + "/healthz")
    assert status == 200
    assert headers["Content-Security-Policy"] == as_sent(value)


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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "larger than 1048576 bytes"),
        ("a: " + "[" * 20_000 + "]" * 20_000, "nested more than 64 levels deep"),
        (
            "a: &a ["
            + "x, " * 9
            + "x]\n"
            + "".join(
                f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n"
                for i in range(8)
            ),
            "more than 100000 values once YAML aliases are expanded",
        ),
        ("rate_limit: {interval: " + "x" * 100_000 + ", burst: 1}", "not a Go duration"),
    ],
    ids=["dev-zero", "deep", "alias-bomb", "huge-value"],
)
async def test_a_hostile_web_config_exits_2_at_start_with_one_short_line(
    tmp_path: Path, text: str | None, expected: str
) -> None:
    path = Path("/dev/zero") if text is None else tmp_path / "web.yml"
    if text is not None:
        path.write_text(text)
    code, _, err = await run("--check-config", "--target", "1/2", "--web-config-file", str(path))
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith(f"gcore-gpu-image-exporter: config error: web config {str(path)!r}")
    assert expected in line
    assert len(line) < 400
