"""Processes and servers for the end-to-end tests: fake Gcore API, exporter, real Prometheus.

Everything here is owned by the test that starts it: random loopback ports, temporary folders,
process groups killed on exit (even when a test fails), and waits on conditions with deadlines.
The fake API runs in its own thread and event loop so that it keeps answering the exporter while
the tests block on HTTP calls to Prometheus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from aiohttp import web
from support.tooling import free_port

from exporter.demo.fake_gcore import FakeGcore

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "grafana" / "gcore-gpu-images.json"
JOB = "gcore-gpu-image-exporter"
API_KEY = "test-key"

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition did not hold before its deadline; the message says which and what was seen."""


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    *,
    interval: float = 0.25,
    details: Callable[[], str] | None = None,
) -> T:
    """Poll `probe` until it returns a truthy value (returned) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = probe()
        except (OSError, PrometheusError, ValueError) as exc:  # not up yet, or a bad answer
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            extra = f"\n{details()}" if details else ""
            raise WaitTimeout(
                f"timed out after {timeout:g}s waiting for {what}; last: {last!r}{extra}"
            )
        time.sleep(interval)  # poll again until the deadline


def refused_port(exit_stack: contextlib.ExitStack) -> int:
    """A port on 127.0.0.1 that refuses connections until `exit_stack` closes: bound, never
    listening, so no other process can take it meanwhile."""
    sock = exit_stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    sock.bind(("127.0.0.1", 0))
    return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """Status and body of a GET; HTTP errors are answers, not exceptions."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback)
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# --- fake Gcore API ---------------------------------------------------------------------------


class FakeApiServer:
    """Serves a `FakeGcore` on 127.0.0.1 from a background thread with its own event loop."""

    def __init__(self, fake: FakeGcore) -> None:
        self.fake = fake
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fake-gcore", daemon=True
        )
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeApiServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._runner is not None:
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.fake.app(), handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    def mutate(self, change: Callable[[FakeGcore], object]) -> None:
        """Apply `change` to the fake's state inside its loop, between two requests."""

        async def apply() -> None:
            change(self.fake)

        asyncio.run_coroutine_threadsafe(apply(), self._loop).result(timeout=10)


# --- processes --------------------------------------------------------------------------------


@dataclass
class Process:
    """A child in its own process group, its output in a log file."""

    name: str
    argv: list[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path = REPO
    popen: subprocess.Popen[bytes] | None = None
    returncode: int | None = None

    def start(self) -> Process:
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(self.env) if self.env is not None else None,
                cwd=self.cwd,
                start_new_session=True,
            )
        return self

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the group, SIGKILL it after `timeout`; the child's exit code (None if killed)."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.returncode = self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.returncode = None
        else:
            self.returncode = self.popen.returncode
        self._signal(signal.SIGKILL)  # leftovers of the group, if any
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        return self.returncode

    def _signal(self, sig: signal.Signals) -> None:
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return f"({self.name}: no log)"
        state = "running" if self.running() else f"exited {self.popen and self.popen.returncode}"
        kept = "\n".join(text.splitlines()[-lines:])
        return f"--- {self.name} ({state}), last {lines} lines of {self.log_path}:\n{kept}"


def clean_env(**extra: str) -> dict[str, str]:
    """The parent's environment minus anything that configures the exporter, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GCORE_")}
    env.update(extra)
    return env


def exporter_process(
    workdir: Path,
    port: int,
    api_url: str,
    targets: list[str],
    *,
    interval: str = "1s",
    name: str = "exporter",
    extra_args: Sequence[str] = (),
) -> Process:
    argv = [sys.executable, "-m", "exporter", "--interval", interval, "--timeout", interval]
    for spec in targets:
        argv += ["--target", spec]
    argv += extra_args
    argv += ["--web.listen-address", f"127.0.0.1:{port}"]
    argv += ["--log.format", "json", "--log.level", "info"]
    env = clean_env(GCORE_BASE_URL=api_url, GCORE_API_KEY=API_KEY, PYTHONUNBUFFERED="1")
    return Process(name, argv, workdir / f"{name}.log", env)


def prometheus_process(
    binary: str, workdir: Path, port: int, scrape_targets: list[str], rules: str
) -> Process:
    """A Prometheus scraping `scrape_targets` every second and evaluating `rules` every second."""
    (workdir / "rules.yaml").write_text(rules, encoding="utf-8")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(workdir / "rules.yaml")],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": scrape_targets}]}],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    data = workdir / "data"
    data.mkdir()
    argv = [
        binary,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={data}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1h",
        "--log.level=info",
    ]
    return Process("prometheus", argv, workdir / "prometheus.log", clean_env(), cwd=workdir)


# --- Prometheus HTTP API ----------------------------------------------------------------------


class PrometheusError(Exception):
    """Prometheus answered with status=error (a bad expression, for instance)."""


@dataclass
class PrometheusApi:
    url: str

    def get(self, path: str, params: Mapping[str, Any] | Sequence[tuple[str, Any]] = ()) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        status, body = http_get(f"{self.url}{path}?{query}", timeout=10)
        try:
            answer = json.loads(body)
        except ValueError:
            raise PrometheusError(f"{path}: HTTP {status}, not JSON: {body[:200]!r}") from None
        if answer.get("status") != "success":
            raise PrometheusError(f"{path} {dict(params)}: {answer.get('error', answer)}")
        return answer["data"]

    def ready(self) -> bool:
        return http_get(f"{self.url}/-/ready", timeout=2)[0] == 200

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.get("/api/v1/query", params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[Any]:
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": step}
        return list(self.get("/api/v1/query_range", params)["result"])

    def label_values(self, label: str, match: str | None, start: float, end: float) -> list[str]:
        params: list[tuple[str, Any]] = [("start", f"{start:.3f}"), ("end", f"{end:.3f}")]
        if match:
            params.append(("match[]", match))
        return list(self.get(f"/api/v1/label/{urllib.parse.quote(label)}/values", params))

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/alerts")["alerts"])

    def firing(self) -> list[dict[str, str]]:
        return [a["labels"] for a in self.alerts() if a["state"] == "firing"]

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


# --- a whole stack ----------------------------------------------------------------------------


@dataclass
class Stack:
    """One scenario: fake API, exporter and Prometheus, started together and stopped together."""

    name: str
    workdir: Path
    fake: FakeGcore
    targets: list[str]
    rules: str
    prometheus_binary: str
    dead_targets: int = 0  # scrape targets where no exporter answers
    replicas: int = 1  # exporters watching the same targets, scraped by the same job
    sharded: bool = False  # replica i is `--shard i --total-shards replicas`
    extra_scrape_targets: list[str] = field(default_factory=list)
    api_server: FakeApiServer | None = None
    exporters: list[Process] = field(default_factory=list)
    prometheus: Process | None = None
    exporter_ports: list[int] = field(default_factory=list)
    prometheus_port: int = 0
    started_at: float = 0.0
    _exit: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def prom(self) -> PrometheusApi:
        return PrometheusApi(f"http://127.0.0.1:{self.prometheus_port}")

    @property
    def exporter(self) -> Process | None:
        """The first replica."""
        return self.exporters[0] if self.exporters else None

    @property
    def exporter_instances(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.exporter_ports]

    @property
    def exporter_instance(self) -> str:
        return self.exporter_instances[0]

    def start(self) -> Stack:
        """Start all three without waiting (so that several stacks start in parallel)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.started_at = time.time()
        self.api_server = self._exit.enter_context(FakeApiServer(self.fake))
        self.extra_scrape_targets = [
            f"127.0.0.1:{refused_port(self._exit)}" for _ in range(self.dead_targets)
        ]
        for number in range(self.replicas):
            port = free_port()
            name = "exporter" if number == 0 else f"exporter-{number + 1}"
            shard = ["--shard", str(number), "--total-shards", str(self.replicas)]
            process = exporter_process(
                self.workdir,
                port,
                self.api_server.url,
                self.targets,
                name=name,
                extra_args=shard if self.sharded else (),
            )
            self._exit.callback(process.stop)
            process.start()
            self.exporters.append(process)
            self.exporter_ports.append(port)
        self.prometheus_port = free_port()
        self.prometheus = prometheus_process(
            self.prometheus_binary,
            self.workdir,
            self.prometheus_port,
            [*self.exporter_instances, *self.extra_scrape_targets],
            self.rules,
        )
        self._exit.callback(self.prometheus.stop)
        self.prometheus.start()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        def exporter_ready() -> bool:
            for process, instance in zip(self.exporters, self.exporter_instances, strict=True):
                if not process.running():
                    raise WaitTimeout(f"{process.name} exited\n{self.diagnostics()}")
                if http_get(f"http://{instance}/readyz", timeout=2)[0] != 200:
                    return False
            return True

        def prometheus_ready() -> bool:
            assert self.prometheus is not None
            if not self.prometheus.running():
                raise WaitTimeout(f"Prometheus exited\n{self.diagnostics()}")
            return self.prom.ready()

        wait_for(
            f"{self.name}: exporter /readyz", exporter_ready, timeout, details=self.diagnostics
        )
        wait_for(
            f"{self.name}: Prometheus /-/ready", prometheus_ready, timeout, details=self.diagnostics
        )
        instances = "|".join(self.exporter_instances)
        wait_for(
            f"{self.name}: Prometheus has scraped every exporter",
            lambda: self.prom.query(
                f'count(up{{instance=~"{instances}"}} == 1) == {self.replicas}'
            ),
            timeout,
            details=self.diagnostics,
        )

    def wait_query(self, what: str, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until `expr` returns at least one series in this stack's Prometheus."""
        return wait_for(
            f"{self.name}: {what} ({expr})",
            lambda: self.prom.query(expr),
            timeout,
            details=self.diagnostics,
        )

    def diagnostics(self) -> str:
        parts = [p.tail() for p in (*self.exporters, self.prometheus) if p is not None]
        with contextlib.suppress(Exception):
            parts.append(f"--- alerts: {json.dumps(self.prom.alerts(), indent=1)[:3000]}")
        return "\n".join(parts)

    def stop(self) -> None:
        self._exit.close()


@contextlib.contextmanager
def running(stacks: list[Stack]) -> Iterator[list[Stack]]:
    """Start every stack, then wait for all of them; stop them all whatever happens."""
    with contextlib.ExitStack() as exit_stack:
        for stack in stacks:
            exit_stack.callback(stack.stop)
            stack.start()
        for stack in stacks:
            stack.wait_ready()
        yield stacks


# --- Grafana emulation ------------------------------------------------------------------------

_SPECIAL = re.compile(r"[$^*{}\[\]'+?.()|]")


def grafana_regex_escape(value: str) -> str:
    """What Grafana's Prometheus datasource does to a variable value inside `=~"..."`."""
    return _SPECIAL.sub(lambda m: "\\\\" + m.group(0), value.replace("\\", "\\\\\\\\"))


def format_multi(values: list[str]) -> str:
    """A multi-value variable as Grafana writes it into a query: one value bare, else (a|b)."""
    escaped = [grafana_regex_escape(v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def interpolate(expr: str, values: Mapping[str, str]) -> str:
    """Replace `$name` / `${name}` with `values[name]`; `$1` (label_replace) stays as it is."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in values:
            return values[name]
        if name.isdigit():
            return match.group(0)
        raise KeyError(f"unknown variable ${name} in {expr!r}")

    return _VARIABLE.sub(replace, expr)


def builtin_variables(range_seconds: float, scrape_interval: float = 1.0) -> dict[str, str]:
    """Grafana's built-ins for a dashboard showing the last `range_seconds` at 1s resolution."""
    interval = scrape_interval
    rate_interval = max(interval + scrape_interval, 4 * scrape_interval)
    seconds = max(1, int(range_seconds))
    return {
        "__interval": f"{interval:g}s",
        "__interval_ms": f"{int(interval * 1000)}",
        "__rate_interval": f"{rate_interval:g}s",
        "__range": f"{seconds}s",
        "__range_s": f"{seconds}",
        "__range_ms": f"{seconds * 1000}",
    }


def panel_targets(dashboard: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(panel title, target) for every query of every panel, rows' nested panels included."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
        for panel in panels:
            for item in panel.get("targets", []):
                if item.get("expr") and not item.get("hide"):
                    yield panel["title"], item
            yield from walk(panel.get("panels", []))

    yield from walk(list(dashboard["panels"]))


_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<match>.*),\s*)?(?P<label>\w+)\)$", re.S)
_QUERY_RESULT = re.compile(r"^query_result\((?P<expr>.*)\)$", re.S)


def variable_query(var: Mapping[str, Any]) -> str:
    query = var["query"]
    return str(query["query"] if isinstance(query, Mapping) else query).strip()


def resolve_options(
    prom: PrometheusApi, var: Mapping[str, Any], values: Mapping[str, str], start: float, end: float
) -> list[tuple[str, str]]:
    """The options (value, text) Grafana would offer for `var`, given the values of the others."""
    query = interpolate(variable_query(var), values)
    if match := _LABEL_VALUES.match(query):
        found = prom.label_values(match["label"], match["match"], start, end)
    elif match := _QUERY_RESULT.match(query):
        found = [_query_result_text(item) for item in prom.query(match["expr"], end)]
    else:
        raise ValueError(f"variable {var['name']}: unsupported query {query!r}")
    regex = var.get("regex") or ""
    if not regex:
        return [(text, text) for text in found]
    pattern = re.compile(_js_regex(regex))
    out = []
    for text in found:
        if m := pattern.search(text):
            groups = m.groupdict()
            value = groups.get("value") or groups.get("text") or m.group(1 if m.groups() else 0)
            out.append((value, groups.get("text") or value))
    return out


def resolve_variable(
    prom: PrometheusApi, var: Mapping[str, Any], values: Mapping[str, str], start: float, end: float
) -> list[str]:
    """The option values Grafana would offer for `var`, given the values of the others."""
    return [value for value, _ in resolve_options(prom, var, values, start, end)]


def _query_result_text(item: Mapping[str, Any]) -> str:
    """Grafana's text for one query_result() series: name{l1="v1",l2="v2"} value timestamp_ms."""
    metric = dict(item["metric"])
    name = metric.pop("__name__", "")
    labels = ",".join(f'{k}="{v}"' for k, v in metric.items())
    value, stamp = item["value"][1], item["value"][0]
    return f"{name}{{{labels}}} {value} {int(float(stamp) * 1000)}"


def _js_regex(regex: str) -> str:
    """A Grafana `/.../flags` regex as a Python pattern (named groups `(?<n>` -> `(?P<n>`)."""
    body = regex[1 : regex.rindex("/")] if regex.startswith("/") else regex
    return re.sub(r"\(\?<(?=[A-Za-z_])", "(?P<", body)
