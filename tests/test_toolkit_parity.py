"""exporter-toolkit's behaviour, and ours next to it, one row each, each row checked over loopback.

The test ids read as the table (`pytest --collect-only -q tests/test_toolkit_parity.py`). The rows
where we differ are docs/security.md's table of differences, rendered here and checked there.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from support.tooling import ROOT
from support.waiting import wait_until
from test_web_security import (
    ALICE,
    HASH,
    MTLS,
    TLS,
    app_for,
    basic,
    client_tls,
    get,
    refused,
    served,
    server_name,
    write_config,
)

from bench.pki import CertificateAuthority
from exporter.config.settings import ConfigError
from exporter.web.app import GUARD
from exporter.web.basic_auth import MAX_CHECKS
from exporter.web.guard import WebGuard

Check = Callable[[Path, CertificateAuthority], Awaitable[None]]


@dataclass(frozen=True)
class Row:
    behaviour: str
    toolkit: str
    here: str
    check: Check
    why: str = ""  # for a difference: why, in docs/security.md

    @property
    def id(self) -> str:
        return f"{self.behaviour} | toolkit: {self.toolkit} | here: {self.here}"


def refuses_at_load(config: dict[str, Any], expected: str) -> Check:
    async def check(directory: Path, _ca: CertificateAuthority) -> None:
        with pytest.raises(ConfigError) as caught:
            WebGuard.load(write_config(directory, config))
        assert len(caught.value.problems) == 1
        assert expected in caught.value.problems[0]

    return check


async def newline_in_header(directory: Path, _ca: CertificateAuthority) -> None:
    config = {"http_server_config": {"headers": {"Content-Security-Policy": "a;\n b\n"}}}
    async with served(app_for(directory, config)) as url:
        status, headers, _ = await get(url + "/healthz")
    assert (status, headers["Content-Security-Policy"]) == (200, "a;  b")


async def bad_edit(directory: Path, _ca: CertificateAuthority) -> None:
    async with served(app_for(directory, {"basic_auth_users": {"alice": HASH}})) as url:
        write_config(directory, {"basic_auth_users": {"alice": "not a hash"}})
        assert (await get(url + "/metrics", auth=ALICE))[0] == 200


async def files_arrive_later(directory: Path, ca: CertificateAuthority) -> None:
    async with served(app_for(directory, {"tls_server_config": TLS})) as url:
        write_config(directory, {"tls_server_config": {"cert_file": "b.crt", "key_file": "b.key"}})
        assert await server_name(url, client_tls(directory)) == "server one"
        ca.issue("server b").write(directory, "b")
        assert await server_name(url, client_tls(directory)) == "server b"


async def policy_edit(directory: Path, _ca: CertificateAuthority) -> None:
    async with served(app_for(directory, {"tls_server_config": MTLS})) as url:
        write_config(directory, {"tls_server_config": TLS})
        assert (await get(url + "/metrics", client_tls(directory, "client")))[0] == 200
        assert await refused(url, client_tls(directory))
    async with served(app_for(directory, {"tls_server_config": TLS})) as url:
        assert (await get(url + "/metrics", client_tls(directory)))[0] == 200


async def long_password(directory: Path, _ca: CertificateAuthority) -> None:
    hashed = bcrypt.hashpw(b"p" * 72, bcrypt.gensalt(4)).decode()
    token = base64.b64encode(b"alice:" + b"p" * 80).decode()
    async with served(app_for(directory, {"basic_auth_users": {"alice": hashed}})) as url:
        assert (await get(url + "/metrics", auth={"Authorization": f"Basic {token}"}))[0] == 200


async def repeated_wrong_password(directory: Path, _ca: CertificateAuthority) -> None:
    async with served(app_for(directory, {"basic_auth_users": {"alice": HASH}})) as url:
        assert (await get(url + "/metrics", auth=basic("alice", "no")))[0] == 401
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(bcrypt, "checkpw", lambda *_: pytest.fail("bcrypt ran again"))
            assert (await get(url + "/metrics", auth=basic("alice", "no")))[0] == 401


async def flood(directory: Path, _ca: CertificateAuthority) -> None:
    app = app_for(directory, {"basic_auth_users": {"alice": HASH}})
    auth, release = app[GUARD].access.auth, threading.Event()
    assert auth is not None
    async with served(app) as url:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(bcrypt, "checkpw", lambda *_: release.wait(10) and False)
            guesses = [
                asyncio.create_task(get(url + "/metrics", auth=basic("eve", str(n))))
                for n in range(MAX_CHECKS)
            ]
            await wait_until(lambda: auth.checks_waiting == MAX_CHECKS, what="a full queue")
            status, headers, _ = await get(url + "/metrics", auth=basic("eve", "one more"))
            release.set()
            assert (status, headers["Retry-After"]) == (429, "1")
            assert [(await guess)[0] for guess in guesses] == [401] * MAX_CHECKS


async def sans_mismatch(directory: Path, _ca: CertificateAuthority) -> None:
    config = {"tls_server_config": {**MTLS, "client_allowed_sans": ["other.example"]}}
    async with served(app_for(directory, config)) as url:
        assert (await get(url + "/metrics", client_tls(directory, "client")))[0] == 403


async def http2(directory: Path, _ca: CertificateAuthority) -> None:
    config = {"tls_server_config": TLS, "http_server_config": {"http2": True}}
    context = client_tls(directory)
    context.set_alpn_protocols(["h2"])
    async with served(app_for(directory, config)) as url:
        host, port = url.removeprefix("https://").split(":")
        _, writer = await asyncio.open_connection(host, int(port), ssl=context)
        try:
            assert writer.get_extra_info("ssl_object").selected_alpn_protocol() is None
        finally:
            writer.close()


ROWS = [
    Row(
        "a header value ending in a newline (a YAML `>` block)",
        "newlines sent as spaces, ends trimmed",
        "the same",
        newline_in_header,
    ),
    Row(
        "a header value holding another control character",
        "sent as it is",
        "refused at load and at reload, one line",
        refuses_at_load(
            {"http_server_config": {"headers": {"X-XSS-Protection": "1\x00"}}},
            "holds the control character U+0000",
        ),
        "aiohttp will not send it, and HTTP (RFC 9110) does not allow it",
    ),
    Row(
        "an edit that does not validate",
        "every request answered 500, every handshake refused, until fixed",
        "refused; the previous config stays in force",
        bad_edit,
        "a typo in a ConfigMap should not take the metrics down; the error log says it waits",
    ),
    Row(
        "an edit naming files that appear later",
        "applies when they appear",
        "the same",
        files_arrive_later,
    ),
    Row(
        "an edit of client_auth_type, TLS versions, ciphers or curves",
        "applies at the next handshake",
        "applies whole at restart; the previous config stays until then",
        policy_edit,
        "OpenSSL fixes them for the listening socket; applying part of an edit locked clients out",
    ),
    Row(
        "a password longer than 72 bytes",
        "its first 72 bytes compared",
        "the same",
        long_password,
    ),
    Row(
        "the same wrong password again",
        "answered from a cache of 100 answers keyed by the password itself",
        "answered from memory for 60 s (up to 1024), keyed by an HMAC under a per-process key",
        repeated_wrong_password,
        "no password is kept in memory, and a refusal is forgotten in a minute",
    ),
    Row(
        "a flood of new guesses",
        "bcrypt one at a time, waiting without bound",
        f"at most {MAX_CHECKS} checks wait; past that 429 with Retry-After",
        flood,
        "the wait and the memory stay bounded, and a 429 says nothing of the password",
    ),
    Row(
        "client_allowed_sans not matched",
        "handshake refused",
        "403, connection closed",
        sans_mismatch,
        "Python's ssl cannot look at names during the handshake",
    ),
    Row(
        "client_auth_type RequireAnyClientCert",
        "a certificate required, not verified",
        "refused at load",
        refuses_at_load(
            {"tls_server_config": {**TLS, "client_auth_type": "RequireAnyClientCert"}},
            "is not possible with Python's ssl",
        ),
        "Python's ssl cannot require a certificate without verifying it",
    ),
    Row(
        "inline cert and key",
        "used",
        "refused at load",
        refuses_at_load(
            {"tls_server_config": {"cert": "PEM", "key_file": "server.key"}},
            "an inline `cert` cannot be used",
        ),
        "Python's ssl loads a certificate and key from files only",
    ),
    Row(
        "several curve_preferences",
        "used in order",
        "refused at load",
        refuses_at_load(
            {"tls_server_config": {**TLS, "curve_preferences": ["X25519", "CurveP256"]}},
            "one curve only",
        ),
        "Python's ssl can set one curve only",
    ),
    Row(
        "http2: true",
        "HTTP/2 over TLS",
        "HTTP/1.1",
        http2,
        "aiohttp's server speaks HTTP/1.1",
    ),
]


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority()


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
async def test_behaviour(row: Row, tmp_path: Path, ca: CertificateAuthority) -> None:
    ca.write(tmp_path)
    ca.write(tmp_path, "trust")
    ca.issue("server one").write(tmp_path, "server")
    ca.issue("prometheus", client=True, dns=["prometheus.example"]).write(tmp_path, "client")
    await row.check(tmp_path, ca)


def differences() -> str:
    """docs/security.md's table: the rows where we differ, and why."""
    lines = ["| behaviour | exporter-toolkit | here | why |", "|---|---|---|---|"]
    for row in ROWS:
        if row.here != "the same":
            assert row.why, f"{row.behaviour}: say why we differ"
            lines.append(f"| {row.behaviour} | {row.toolkit} | {row.here} | {row.why} |")
    return "\n".join(lines) + "\n"


def test_the_docs_list_every_difference() -> None:
    text = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    assert differences() in text, "paste `PYTHONPATH=. python tests/test_toolkit_parity.py`"


def test_a_row_that_is_the_same_needs_no_why() -> None:
    assert all(not row.why for row in ROWS if row.here == "the same")


if __name__ == "__main__":
    print(differences(), end="")
