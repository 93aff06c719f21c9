"""The web config file: the exporter-toolkit format parsed, validated, turned into a TLS context."""

from __future__ import annotations

import ssl
from pathlib import Path

import bcrypt
import pytest
import yaml

from bench.pki import CertificateAuthority
from exporter.config.settings import ConfigError
from exporter.config.yaml_file import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, MAX_CONFIG_VALUES
from exporter.web.config_file import as_sent, load_web_config

HASH = bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode()


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority()


@pytest.fixture
def tls_dir(tmp_path: Path, ca: CertificateAuthority) -> Path:
    ca.issue("server").write(tmp_path, "server")
    ca.write(tmp_path)
    return tmp_path


def write(directory: Path, config: object, name: str = "web.yml") -> Path:
    path = directory / name
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config), "utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    return caught.value.problems


TLS = {"cert_file": "server.crt", "key_file": "server.key"}


def test_a_go_exporters_file_works_unchanged(tls_dir: Path) -> None:
    """Every key of the toolkit's format, as a Go exporter's docs would have it written."""
    path = write(
        tls_dir,
        f"""
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
  client_allowed_sans: [prometheus.example.com, 10.0.0.1]
  min_version: TLS12
  max_version: TLS13
  cipher_suites:
    - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    - TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
    - TLS_AES_128_GCM_SHA256
  prefer_server_cipher_suites: false
  curve_preferences: [CurveP256]
http_server_config:
  http2: true
  headers:
    Strict-Transport-Security: max-age=31536000
    X-Content-Type-Options: nosniff
    X-Frame-Options: deny
    X-XSS-Protection: 1; mode=block
    Content-Security-Policy: default-src 'self'
basic_auth_users:
  alice: {HASH}
  bob: $2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi
rate_limit:
  interval: 1m30s
  burst: 10
""",
    )
    loaded = load_web_config(path)
    context = loaded.ssl_context
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert not context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    tls12 = {c["name"] for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"}
    assert tls12 == {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384"}
    assert loaded.config.rate_limit.interval == 90
    assert set(loaded.config.basic_auth_users) == {"alice", "bob"}
    assert loaded.files.paths == (
        path,
        tls_dir / "server.crt",
        tls_dir / "server.key",
        tls_dir / "ca.crt",
    )


@pytest.mark.parametrize("text", ["", "{}", "tls_server_config:\nbasic_auth_users:\n"])
def test_an_empty_file_or_empty_sections_mean_plain_http_and_no_auth(
    tmp_path: Path, text: str
) -> None:
    loaded = load_web_config(write(tmp_path, text))
    assert loaded.ssl_context is None
    assert loaded.config.basic_auth_users == {}


def test_relative_paths_are_relative_to_the_files_directory(
    tls_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    assert load_web_config(write(tls_dir, {"tls_server_config": TLS})).ssl_context is not None


def test_prefer_server_cipher_suites_defaults_to_true(tls_dir: Path) -> None:
    context = load_web_config(write(tls_dir, {"tls_server_config": TLS})).ssl_context
    assert context is not None
    assert context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2  # the toolkit's default too


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {"tls_server_config": {**TLS, "cert_fil": "x"}},
            "tls_server_config.cert_fil: unknown key",
        ),
        ({"basic_auth": {}}, "basic_auth: unknown key"),
        ({"http_server_config": {"http3": True}}, "http_server_config.http3: unknown key"),
        ({"tls_server_config": {**TLS, "client_auth_type": "Always"}}, "client_auth_type: Input"),
        ({"tls_server_config": {**TLS, "min_version": "TLS14"}}, "min_version: Input should be"),
        (
            {"tls_server_config": {**TLS, "cipher_suites": ["TLS_RSA_WITH_3DES_EDE_CBC_SHA"]}},
            "cipher_suites.0: unknown cipher (Go's crypto/tls names)",
        ),
        (
            {"tls_server_config": {**TLS, "curve_preferences": ["P256"]}},
            "curve_preferences.0: unknown curve",
        ),
        (
            {"tls_server_config": {**TLS, "curve_preferences": ["X25519", "CurveP256"]}},
            "can restrict the key exchange to one curve only",
        ),
        ({"tls_server_config": {"cert_file": "server.crt"}}, "key_file is required"),
        (
            {"tls_server_config": {"key_file": "server.key", "client_auth_type": "NoClientCert"}},
            "cert_file is required",
        ),
        (
            {"tls_server_config": {"cert": "PEM", "key_file": "server.key"}},
            "an inline `cert` cannot be used",
        ),
        (
            {"tls_server_config": {**TLS, "client_auth_type": "RequireAnyClientCert"}},
            "is not possible with Python's ssl",
        ),
        (
            {"tls_server_config": {**TLS, "client_auth_type": "RequireAndVerifyClientCert"}},
            "RequireAndVerifyClientCert needs client_ca_file",
        ),
        (
            {"tls_server_config": {**TLS, "client_ca_file": "ca.crt"}},
            "client CA's have been configured without a client_auth_type",
        ),
        (
            {
                "tls_server_config": {
                    **TLS,
                    "client_auth_type": "VerifyClientCertIfGiven",
                    "client_ca_file": "ca.crt",
                    "client_allowed_sans": ["a"],
                }
            },
            "client_allowed_sans requires client_auth_type RequireAndVerifyClientCert",
        ),
        (
            {"tls_server_config": {**TLS, "min_version": "TLS13", "max_version": "TLS12"}},
            "min_version TLS13 is above max_version TLS12",
        ),
        (
            {"http_server_config": {"headers": {"Server": "x"}}},
            "headers: 'Server' can not be configured",
        ),
        (
            {"http_server_config": {"headers": {"X-Frame-Options": "allow"}}},
            "headers: X-Frame-Options must be one of deny, sameorigin",
        ),
        ({"rate_limit": {"interval": "1 minute", "burst": 1}}, "rate_limit.interval: not a Go"),
        ({"rate_limit": {"interval": "1s"}}, "burst must be at least 1 when interval is set"),
        ({"basic_auth_users": {"alice": "$2y$10$short"}}, "basic_auth_users.alice: not a bcrypt"),
    ],
)
def test_each_mistake_is_one_clear_line(tls_dir: Path, config: object, expected: str) -> None:
    found = problems(write(tls_dir, config))
    assert len(found) == 1, found
    assert found[0].startswith(f"web config {str(tls_dir / 'web.yml')!r}: ")
    assert expected in found[0]


def test_a_plaintext_password_in_place_of_a_hash_is_never_echoed(tmp_path: Path) -> None:
    found = problems(write(tmp_path, {"basic_auth_users": {"alice": "hunter2-plaintext"}}))
    assert "hunter2" not in "\n".join(found)
    assert "htpasswd -nBC 10" in found[0]


def test_several_mistakes_are_reported_together(tls_dir: Path) -> None:
    config = {
        "tls_server_config": {**TLS, "min_version": "TLS9", "max_version": "TLS8"},
        "http_server_config": {"headers": {"Server": "x"}},
        "extra": 1,
    }
    found = problems(write(tls_dir, config))
    assert len(found) == 4, found


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tls_server_config: [", "is not valid YAML"),
        ("- a list", "must hold a mapping"),
        ("tls_server_config: 3", "tls_server_config: Input should be a valid dictionary"),
    ],
)
def test_a_malformed_file_is_one_clear_line(tmp_path: Path, text: str, expected: str) -> None:
    found = problems(write(tmp_path, text))
    assert len(found) == 1
    assert expected in found[0]


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    assert "cannot read: No such file or directory" in problems(tmp_path / "absent.yml")[0]


def test_unreadable_certificate_files_are_named(tls_dir: Path) -> None:
    config = {"tls_server_config": {"cert_file": "nope.crt", "key_file": "server.key"}}
    (found,) = problems(write(tls_dir, config))
    assert f"cert_file: cannot read {str(tls_dir / 'nope.crt')!r}: No such file" in found


def test_a_key_of_another_certificate_is_refused(tls_dir: Path, ca: CertificateAuthority) -> None:
    ca.issue("other").write(tls_dir, "other")
    config = {"tls_server_config": {"cert_file": "server.crt", "key_file": "other.key"}}
    (found,) = problems(write(tls_dir, config))
    assert "the key does not match the certificate" in found


def test_garbage_in_place_of_a_certificate_is_refused(tls_dir: Path) -> None:
    (tls_dir / "server.crt").write_text("not a certificate\n")
    (found,) = problems(write(tls_dir, {"tls_server_config": TLS}))
    assert "not a PEM certificate and unencrypted PEM key" in found


def test_an_encrypted_key_is_refused_without_prompting(tls_dir: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key((tls_dir / "server.key").read_bytes(), None)
    (tls_dir / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass"),
        )
    )
    (found,) = problems(write(tls_dir, {"tls_server_config": TLS}))
    assert "the key is encrypted" in found


def test_a_client_ca_file_without_certificates_is_refused(tls_dir: Path) -> None:
    (tls_dir / "empty.crt").write_text("")
    config = {
        "tls_server_config": {
            **TLS,
            "client_auth_type": "RequireAndVerifyClientCert",
            "client_ca_file": "empty.crt",
        }
    }
    (found,) = problems(write(tls_dir, config))
    assert "client_ca_file" in found
    assert "no PEM certificate found" in found


def test_an_inline_client_ca_is_used(tls_dir: Path, ca: CertificateAuthority) -> None:
    config = {
        "tls_server_config": {
            **TLS,
            "client_auth_type": "VerifyClientCertIfGiven",
            "client_ca": ca.cert_pem.decode(),
        }
    }
    context = load_web_config(write(tls_dir, config)).ssl_context
    assert context is not None
    assert context.verify_mode == ssl.CERT_OPTIONAL
    assert context.get_ca_certs()[0]["subject"] == ((("commonName", "test CA"),),)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("1s", 1.0), ("500ms", 0.5), ("1h2m3.5s", 3723.5), ("0", 0.0), (1_000_000_000, 1.0)],
)
def test_rate_limit_intervals_are_go_durations(
    tmp_path: Path, value: object, seconds: float
) -> None:
    config = {"rate_limit": {"interval": value, "burst": 1}}
    assert load_web_config(write(tmp_path, config)).config.rate_limit.interval == seconds


# --- a hostile file: the main config's limits --------------------------------------------------

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#" * MAX_CONFIG_BYTES + "\n", f"larger than {MAX_CONFIG_BYTES} bytes"),
        ("a: " + "[" * 20_000 + "]" * 20_000, f"nested more than {MAX_CONFIG_DEPTH} levels deep"),
        (BOMB, f"more than {MAX_CONFIG_VALUES} values once YAML aliases are expanded"),
        ("rate_limit: {burst: " + "9" * 5000 + "}", "holds a value that cannot be read"),
        ("tls_server_config: *" + "x" * 100_000, "is not valid YAML: found undefined alias"),
        (b"\xff\xfe".decode("latin-1"), "not UTF-8 text"),
    ],
    ids=["too-big", "too-deep", "alias-bomb", "huge-integer", "huge-alias-name", "not-utf8"],
)
def test_a_hostile_file_is_one_short_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "web.yml"
    path.write_bytes(text.encode("latin-1" if expected == "not UTF-8 text" else "utf-8"))
    (line,) = problems(path)
    assert expected in line
    assert len(line.removeprefix(f"web config {str(path)!r}")) < 150, line


def test_dev_zero_is_refused_without_reading_it_all() -> None:
    (line,) = problems(Path("/dev/zero"))
    assert line.endswith(f"larger than {MAX_CONFIG_BYTES} bytes")


def test_just_within_the_depth_limit_is_read(tmp_path: Path) -> None:
    depth = MAX_CONFIG_DEPTH - 2  # the document's mapping and http_server_config's are levels too
    path = write(tmp_path, "http_server_config: {http2: " + "[" * depth + "]" * depth + "}")
    assert "http2: Input should be a valid boolean" in problems(path)[0]


@pytest.mark.parametrize(
    "config",
    [
        {"http_server_config": {"headers": {"X-Frame-Options": "y" * 100_000}}},
        {"http_server_config": {"headers": {"X" * 100_000: "a"}}},
        {"rate_limit": {"interval": "z" * 100_000, "burst": 1}},
        {"tls_server_config": {"x" * 100_000: 1}},
    ],
    ids=["value", "header-name", "duration", "key"],
)
def test_a_huge_bad_value_is_cut_in_its_line(tmp_path: Path, config: object) -> None:
    path = write(tmp_path, config)
    (line,) = problems(path)
    assert len(line.removeprefix(f"web config {str(path)!r}")) < 300, line[:400]


def test_a_certificate_that_is_no_regular_file_is_refused(tls_dir: Path) -> None:
    config = {"tls_server_config": {"cert_file": "/dev/zero", "key_file": "server.key"}}
    (found,) = problems(write(tls_dir, config))
    assert "cert_file: '/dev/zero' is not a regular file" in found


# --- header values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        ("default-src 'self';\n  img-src 'self'\n", "default-src 'self';   img-src 'self'"),
        ("\tmax-age=1\r\n", "max-age=1"),
        ("a\tb", "a\tb"),
        ("é ✓", "é ✓"),
    ],
    ids=["folded-block", "crlf-and-tab-ends", "inner-tab", "non-ascii"],
)
def test_header_values_are_sent_as_go_writes_them(value: str, sent: str) -> None:
    """net/http's Header.Write: CR and LF become spaces, then spaces and tabs trimmed at ends."""
    assert as_sent(value) == sent


@pytest.mark.parametrize(
    ("value", "code"), [("a\x00b", "U+0000"), ("a\x1bb", "U+001B"), ("a\x7f", "U+007F")]
)
def test_a_control_character_in_a_header_is_one_clear_line(
    tmp_path: Path, value: str, code: str
) -> None:
    config = {"http_server_config": {"headers": {"Content-Security-Policy": value}}}
    (line,) = problems(write(tmp_path, config))
    assert line.endswith(
        f"http_server_config: headers: Content-Security-Policy holds the control character "
        f"{code}, which HTTP does not allow in a header"
    )


def test_a_lone_surrogate_in_a_header_is_refused(tmp_path: Path) -> None:
    text = 'http_server_config: {headers: {X-XSS-Protection: "a\\ud800"}}'
    (line,) = problems(write(tmp_path, text))
    assert "X-XSS-Protection holds the control character U+D800" in line
