"""Soak: the real daemon under churn while scrapes run; does anything pile up?

The exporter runs as its own process (`python -m exporter`) against the fake Gcore API served
here. Churn: images come and go, change status, get and lose locks (tasks in every state, or
none), listings page while they change, every kind of fault the fake can inject (each error
status, 429 with and without Retry-After, HTML and invalid JSON, answers slower than the timeout,
answers held then released, latency), SIGHUP reloads with new targets and intervals, refused
configuration files and rotated API keys. Three scrapers read /metrics in every format and check
each body for duplicate series.

Reported: RSS, open file descriptors (from /proc) and live asyncio tasks (the daemon's debug
log line after each round) at the end of the warm-up and at the end, their peaks, and what
happened. Usage: `python -m bench.soak [--seconds 300] [--images 300] [--json]`.

`--churn` runs a busy account instead: one project/region of `--images` (default 2,000) listed
every second, where each second 20 images are replaced by new ids, 40 change status and 20 change
lock (half of them to a RUNNING task), about 5% of requests answer 500 and /metrics is scraped
once. It reports RSS at 30 s and at the end (medians of the samples of the 5 s before each): what
a round leaves behind for the collector shows up there as growth.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import random
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families as text_families

from exporter.demo.fake_gcore import FakeGcore, make_image, make_task

SCOPES = [(1, 10), (1, 11), (2, 20)]
STATUSES = ["active", "queued", "saving", "uploading", "importing", "killed", "deactivated", "new"]
TASK_STATES = ["RUNNING", "NEW", "FINISHED", "ERROR"]
TARGET_SETS = [
    ["1/10", "1/11", "2/20/{e0}", "2/20/{e1}"],
    ["1/10", "2/20"],  # the explicit images become discovered, 1/11 leaves
    ["1/11", "2/20/{e0}", "2/20/{e2}", "9/99/{e0}"],  # an image that does not exist
]
FAULTS: list[str] = [
    *("401", "403", "404", "408", "429", "429-retry-after", "500", "502", "503"),
    *("html", "not-json", "bad-page", "slow", "held", "latency"),
]
REFUSED = "configuration refused, the running one stays"
WINDOW = 5
"""Samples that make a warm-up or an end figure: their minimum, as in-flight work varies."""


@dataclass
class Report:
    seconds: float = 0.0
    images: int = 0
    rounds: int = 0
    scrapes: Counter[str] = field(default_factory=Counter)
    duplicate_series: int = 0
    duplicate_examples: list[str] = field(default_factory=list)
    unparsable_scrapes: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    churn: Counter[str] = field(default_factory=Counter)
    reloads_applied: int = 0
    reloads_refused: int = 0
    key_rotations: int = 0
    unexpected_errors: int = 0
    error_lines: list[str] = field(default_factory=list)
    stray_lines: list[str] = field(default_factory=list)
    exit_code: int | None = None
    rss_mib_warm: float = 0.0
    rss_mib_end: float = 0.0
    rss_mib_peak: float = 0.0
    fds_warm: int = 0
    fds_end: int = 0
    fds_peak: int = 0
    tasks_warm: int = 0
    tasks_end: int = 0
    tasks_peak: int = 0
    cpu_seconds: float = 0.0


@dataclass
class Sample:
    rss_mib: float
    fds: int
    tasks: int | None


class Daemon:
    """The exporter process and what its log says."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: Counter[str] = Counter()
        self.tasks: int | None = None  # from the last "event loop" line
        self.stray: list[str] = []  # lines that are not JSON: a traceback
        self.errors: list[str] = []  # error lines but the refusals the soak asks for
        assert process.stderr is not None
        self._reader = asyncio.create_task(self._read(process.stderr))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            line = raw.decode(errors="replace").rstrip("\n")
            try:
                event = json.loads(line)
            except ValueError:
                self.stray.append(line[:300])
                continue
            self.events[event["msg"]] += 1
            if event.get("level") == "error" and event["msg"] != REFUSED:
                self.errors.append(str(event["msg"])[:300])
            if event["msg"] == "event loop":
                self.tasks = int(event["tasks"])

    def sample(self) -> Sample:
        pid = self.process.pid
        status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
        rss_kib = next(int(line.split()[1]) for line in status.splitlines() if line[:6] == "VmRSS:")
        fds = sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
        return Sample(rss_kib / 1024, fds, self.tasks)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text(encoding="utf-8")
        utime, stime = fields.rpartition(")")[2].split()[11:13]
        return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")

    async def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), 30)
        await asyncio.wait_for(self._reader, 10)
        return code


class Account:
    """The fake's state and the churn applied to it."""

    def __init__(self, fake: FakeGcore, rng: random.Random, images: int) -> None:
        self.fake = fake
        self.rng = rng
        self.explicit = [f"e0000000-0000-4000-8000-{n:012d}" for n in range(3)]
        self._next = 0
        for image_id in self.explicit:
            fake.put_image(2, 20, make_image(image_id, image_id[-4:]))
        for _ in range(images):
            self.add()

    def add(self) -> None:
        self._next += 1
        project, region = self.rng.choice(SCOPES)
        image_id = f"50a40000-0000-4000-8000-{self._next:012d}"
        self.fake.put_image(project, region, make_image(image_id, f"img-{self._next}"))

    def pick(self) -> tuple[int, int, str] | None:
        scope = self.rng.choice(SCOPES)
        ids = [i for i in self.fake.images.get(scope, {}) if i not in self.explicit]
        return (*scope, self.rng.choice(ids)) if ids else None

    def step(self, report: Report) -> None:
        action = self.rng.choice(["add", "remove", "status", "lock", "unlock", "invalid", "fault"])
        picked = self.pick()
        if action == "add" or picked is None:
            self.add()
            action = "add"
        elif action == "remove":
            self.fake.remove_image(*picked)
        elif action == "status":
            self.fake.update_image(*picked, status=self.rng.choice(STATUSES))
        elif action == "lock":
            task_id = f"task-{self.rng.randrange(50)}"
            if self.rng.random() < 0.8:  # else the Tasks API has never heard of it: a 404
                self.fake.put_task(make_task(task_id, self.rng.choice(TASK_STATES)))
            self.fake.update_image(*picked, task_id=task_id)
        elif action == "unlock":
            self.fake.update_image(*picked, task_id=None)
        elif action == "invalid":  # one bad item in a listing, repaired by a later `status`
            self.fake.update_image(*picked, size="huge", status="active")
        else:
            report.faults[self.inject()] += 1
            return
        report.churn[action] += 1

    def inject(self) -> str:
        """One fault on listings, images or tasks; returns its kind."""
        rng = self.rng
        pattern = rng.choice([r"/images\?", r"/images/[^?]+$", r"/tasks/"])
        times = rng.randint(1, 3)
        kind = rng.choice(FAULTS)
        if kind.isdigit():
            self.fake.inject(pattern, int(kind), times=times)
        elif kind == "429-retry-after":
            self.fake.inject(pattern, 429, headers={"Retry-After": "1"}, times=1)
        elif kind == "html":
            body = "<html><body>502 Bad Gateway</body></html>"
            self.fake.inject(pattern, 502, body=body, content_type="text/html", times=times)
        elif kind == "not-json":
            self.fake.inject(pattern, 200, body="{not json", content_type="text/plain", times=times)
        elif kind == "bad-page":
            self.fake.inject(pattern, 200, body={"count": "many", "results": 3}, times=times)
        elif kind == "slow":  # longer than the timeout
            self.fake.inject(pattern, 200, delay=1.5, times=times)
        elif kind == "held":
            release = asyncio.Event()
            self.fake.inject(pattern, 503, hold=release, times=times)
            asyncio.get_running_loop().call_later(rng.uniform(0.2, 1.5), release.set)
        else:
            self.fake.latency = 0.05 if self.fake.latency == 0 else 0.0
        return kind


def write_config(path: Path, targets: list[str], interval: str) -> None:
    lines = [f"targets: [{', '.join(targets)}]", f"interval: {interval}"]
    lines += ["timeout: 300ms", "stale_after: 3s", "concurrency: 4", "log_level: debug"]
    swap = path.with_suffix(".new")
    swap.write_text("\n".join(lines) + "\n", encoding="utf-8")
    swap.replace(path)


def write_key(path: Path, key: str) -> None:
    """Replace the key file at once, as secret agents do (a new file renamed over the old one)."""
    swap = path.with_suffix(".new")
    swap.write_text(f"{key}\n", encoding="utf-8")
    swap.replace(path)


def duplicates(body: str) -> list[str]:
    """Series that appear twice: the exporter writes one sample per line, `SERIES VALUE`."""
    series = Counter(
        line.rpartition(" ")[0] for line in body.splitlines() if line[:1] not in ("#", "")
    )
    return [name for name, count in series.items() for _ in range(count - 1)]


def parses(body: str, openmetrics: bool) -> bool:
    parse = openmetrics_families if openmetrics else text_families
    try:
        for _ in parse(body):
            pass
    except ValueError:
        return False
    return True


async def scrape(
    http: aiohttp.ClientSession, url: str, report: Report, stop: asyncio.Event
) -> None:
    """Scrape in every format until `stop`; every tenth body goes through a full parser."""
    formats: list[tuple[str, dict[str, str]]] = [
        ("text", {"Accept-Encoding": "identity"}),
        ("openmetrics", {"Accept": "application/openmetrics-text", "Accept-Encoding": "identity"}),
        ("gzip", {"Accept-Encoding": "gzip"}),
    ]
    while not stop.is_set():
        for name, headers in formats:
            async with http.get(url + "/metrics", headers=headers, auto_decompress=False) as got:
                raw = await got.read()
                compressed = got.headers.get("Content-Encoding") == "gzip"
            body = (gzip.decompress(raw) if compressed else raw).decode()
            twice = duplicates(body)
            report.duplicate_series += len(twice)
            report.duplicate_examples.extend(twice[: 10 - len(report.duplicate_examples)])
            if report.scrapes[name] % 10 == 0 and not parses(body, name == "openmetrics"):
                report.unparsable_scrapes += 1
            report.scrapes[name] += 1
        await asyncio.sleep(0.01)  # between scrapes: other scrapers and the churn run


async def serve_fake(fake: FakeGcore) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def soak(seconds: float, images: int, seed: int) -> Report:
    rng = random.Random(seed)
    fake = FakeGcore(api_key=f"soak-key-{rng.randrange(10**9)}", max_page=40)
    account = Account(fake, rng, images)
    runner, fake_url = await serve_fake(fake)
    report = Report(images=images)
    with tempfile.TemporaryDirectory(prefix="soak-") as work:
        files = Files(Path(work) / "config.yaml", Path(work) / "api-key")
        explicit = {f"e{n}": image_id for n, image_id in enumerate(account.explicit)}
        targets = [[t.format(**explicit) for t in target_set] for target_set in TARGET_SETS]
        write_config(files.config, targets[0], "300ms")
        write_key(files.key, fake.api_key)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GCORE_")}
        env |= {"GCORE_BASE_URL": fake_url, "GCORE_API_KEY_FILE": str(files.key)}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "exporter",
            "--config",
            str(files.config),
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--log.format",
            "json",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        daemon = Daemon(process)
        try:
            soaked = Soak(daemon, account, report, files, targets)
            await soaked.run(f"http://127.0.0.1:{port}", seconds)
        finally:
            report.exit_code = await daemon.stop() if process.returncode is None else None
            report.stray_lines = daemon.stray[:20]
            await runner.cleanup()
    return report


@dataclass(frozen=True)
class Files:
    config: Path
    key: Path


class Soak:
    """The churn loop: account steps, reloads, key rotations and samples, until enough happened."""

    def __init__(
        self,
        daemon: Daemon,
        account: Account,
        report: Report,
        files: Files,
        targets: list[list[str]],
    ) -> None:
        self.daemon = daemon
        self.account = account
        self.report = report
        self.files = files
        self.targets = targets
        self.warm: list[Sample] = []
        self.samples: list[Sample] = []  # after the warm-up
        self.rotated_key: str | None = None  # written, not yet taken by the daemon
        self.reloads = 0

    async def run(self, url: str, seconds: float) -> None:
        report, daemon = self.report, self.daemon
        async with aiohttp.ClientSession() as http:
            await until_ready(http, url, daemon)
            stop = asyncio.Event()
            scrapers = [asyncio.create_task(scrape(http, url, report, stop)) for _ in range(3)]
            try:
                await self._churn(seconds)
            finally:
                stop.set()
                await asyncio.gather(*scrapers)
        report.cpu_seconds = round(daemon.cpu_seconds(), 1)
        events = daemon.events
        report.rounds = events["poll done"]
        report.reloads_applied = events["configuration reloaded"]
        report.reloads_refused = events[REFUSED]
        report.unexpected_errors = len(daemon.errors) + events["unexpected error while polling"]
        report.error_lines = daemon.errors[:20]
        summarise(report, self.warm[-WINDOW:], self.samples[-WINDOW:], self.warm + self.samples)

    async def _churn(self, seconds: float) -> None:
        rng = self.account.rng
        started = time.monotonic()
        warm_until = started + max(2.0, seconds * 0.2)
        deadline = started + seconds * 3 + 60  # the least work below must not run for ever
        next_reload, next_rotation, next_sample = started + 0.5, started, started
        while self.daemon.process.returncode is None:
            now = time.monotonic()
            self.account.step(self.report)
            if now >= next_reload:
                next_reload = now + rng.uniform(0.3, 1.0)
                self._reload()
            if self.rotated_key is None and now >= next_rotation:
                self.rotated_key = f"soak-key-{rng.randrange(10**9)}"
                write_key(self.files.key, self.rotated_key)  # the fake takes it after the daemon
            if self._rotation_taken():
                next_rotation = now + rng.uniform(2.0, 6.0)
            if now >= next_sample:
                next_sample = now + 0.25
                self._sample(warming=now < warm_until)
            self.report.seconds = round(now - started, 1)
            if (now - started >= seconds and self._enough()) or now > deadline:
                return
            await asyncio.sleep(rng.uniform(0.01, 0.05))  # the pace of the churn

    def _reload(self) -> None:
        """A bad file first, then a good one, then either (a quarter of them bad)."""
        rng = self.account.rng
        self.reloads += 1
        if self.reloads == 1 or (self.reloads > 2 and rng.random() < 0.25):
            self.files.config.write_text("targets: [1/x]\ninterval: soon\n", encoding="utf-8")
        else:
            write_config(
                self.files.config, rng.choice(self.targets), rng.choice(["300ms", "500ms"])
            )
        self.daemon.process.send_signal(signal.SIGHUP)

    def _rotation_taken(self) -> bool:
        taken = self.daemon.events["API key changed"]
        if self.rotated_key is None or taken <= self.report.key_rotations:
            return False
        self.account.fake.api_key, self.rotated_key = self.rotated_key, None
        self.report.key_rotations = taken
        return True

    def _sample(self, *, warming: bool) -> None:
        sample = self.daemon.sample()
        if sample.tasks is None:  # no round has ended yet
            return
        (self.warm if warming or len(self.warm) < WINDOW else self.samples).append(sample)

    def _enough(self) -> bool:
        """At least one reload applied, one refused, one key rotation and an end window."""
        events = self.daemon.events
        return (
            len(self.samples) >= WINDOW
            and events["configuration reloaded"] > 0
            and events[REFUSED] > 0
            and self.report.key_rotations > 0
        )


def summarise(report: Report, warm: list[Sample], end: list[Sample], every: list[Sample]) -> None:
    report.rss_mib_warm = round(warm[-1].rss_mib, 1)
    report.rss_mib_end = round(end[-1].rss_mib, 1)
    report.rss_mib_peak = round(max(s.rss_mib for s in every), 1)
    report.fds_warm, report.fds_end = min(s.fds for s in warm), min(s.fds for s in end)
    report.fds_peak = max(s.fds for s in every)
    report.tasks_warm = min(s.tasks or 0 for s in warm)
    report.tasks_end = min(s.tasks or 0 for s in end)
    report.tasks_peak = max(s.tasks or 0 for s in every)


async def until_ready(http: aiohttp.ClientSession, url: str, daemon: Daemon) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and daemon.process.returncode is None:
        try:
            async with http.get(url + "/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)  # the process is starting
    raise RuntimeError(f"the exporter never became ready: {daemon.stray[-5:]}")


def print_report(report: Report) -> None:
    print(f"soaked:      {report.seconds} s, {report.images} images, {report.rounds} rounds")
    print(
        f"RSS:         {report.rss_mib_warm} MiB after warm-up, {report.rss_mib_end} MiB at the "
        f"end, peak {report.rss_mib_peak} MiB; CPU {report.cpu_seconds} s"
    )
    print(
        f"open fds:    {report.fds_warm} after warm-up, {report.fds_end} at the end, "
        f"peak {report.fds_peak}"
    )
    print(
        f"tasks:       {report.tasks_warm} after warm-up, {report.tasks_end} at the end, "
        f"peak {report.tasks_peak}"
    )
    print(
        f"scrapes:     {dict(report.scrapes)}; duplicate series {report.duplicate_series}, "
        f"unparsable {report.unparsable_scrapes}"
    )
    print(
        f"reloads:     {report.reloads_applied} applied, {report.reloads_refused} refused; "
        f"key rotations {report.key_rotations}"
    )
    print(f"churn:       {dict(report.churn)}")
    print(f"faults:      {sum(report.faults.values())} ({dict(sorted(report.faults.items()))})")
    print(
        f"exit:        {report.exit_code}; unexpected errors {report.unexpected_errors}; "
        f"stray log lines {len(report.stray_lines)}"
    )
    for line in report.error_lines + report.stray_lines:
        print(f"             {line}")


CHURN_SCOPE = (1, 10)
CHURN_EVERY_SECOND = {"replaced": 20, "status": 40, "lock": 20}
FAULT_SHARE = 0.05
RSS_WINDOW = 5.0
"""Seconds of samples whose median makes the figure at 30 s and at the end."""


@dataclass
class ChurnReport:
    seconds: float = 0.0
    images: int = 0
    rounds: int = 0
    full_collections: int = 0  # the daemon's thaws of its frozen survivors
    scrapes: int = 0
    requests: int = 0
    faults: int = 0
    churn: Counter[str] = field(default_factory=Counter)
    rss_mib_30s: float = 0.0
    rss_mib_end: float = 0.0
    rss_mib_peak: float = 0.0
    growth_percent: float = 0.0
    fds_end: int = 0
    tasks_end: int = 0
    cpu_millicores: int = 0  # the daemon's average
    exposition_mib: float = 0.0  # the last text body scraped
    images_end: int = 0  # exported in it: fewer when listings failed for `stale_after`
    unexpected_errors: int = 0
    stray_lines: list[str] = field(default_factory=list)
    exit_code: int | None = None

    def lines(self) -> str:
        return "\n".join(
            [
                f"churned:     {self.seconds} s, {self.images} images, {self.rounds} rounds, "
                f"{self.scrapes} scrapes, {self.full_collections} full collections",
                f"RSS:         {self.rss_mib_30s} MiB at 30 s, {self.rss_mib_end} MiB at the end "
                f"({self.growth_percent:+.1f}%), peak {self.rss_mib_peak} MiB",
                f"requests:    {self.requests}, {self.faults} answered 500",
                f"churn:       {dict(self.churn)}",
                f"at the end:  {self.fds_end} open fds, {self.tasks_end} asyncio tasks",
                f"daemon:      {self.cpu_millicores}m CPU, {self.exposition_mib} MiB exposition "
                f"of {self.images_end} images at the end",
                f"exit:        {self.exit_code}; unexpected errors {self.unexpected_errors}; "
                f"stray log lines {len(self.stray_lines)}",
                *(f"             {line}" for line in self.stray_lines),
            ]
        )


class BusyAccount:
    """One scope of many images that changes every second, as a busy account does."""

    def __init__(self, fake: FakeGcore, rng: random.Random, images: int) -> None:
        self.fake, self.rng = fake, rng
        self.ids: list[str] = []
        self._next = 0
        self._tasks: list[str] = []  # oldest first: the fake forgets those past 1,000
        self._locks = 0
        self._requests = 0  # those of `fake.requests` already given their share of faults
        for _ in range(images):
            self._add()

    def _add(self) -> None:
        self._next += 1
        image_id = f"c4a40000-0000-4000-8000-{self._next:012d}"
        self.fake.put_image(*CHURN_SCOPE, make_image(image_id, f"busy-{self._next}"))
        self.ids.append(image_id)

    def _lock(self, image_id: str) -> None:
        """Half of the new locks name a RUNNING task, the others a task that ended or none."""
        task_id: str | None = None
        if self.rng.random() < 0.75:
            self._locks += 1
            task_id = f"7a5c0000-0000-4000-8000-{self._locks:012d}"
            state = "RUNNING" if self.rng.random() < 2 / 3 else self.rng.choice(TASK_STATES[2:])
            self.fake.put_task(make_task(task_id, state))
            self._tasks.append(task_id)
            if len(self._tasks) > 1000:
                del self.fake.tasks[self._tasks.pop(0)]
        self.fake.update_image(*CHURN_SCOPE, image_id, task_id=task_id)

    def second(self, report: ChurnReport) -> None:
        """One second of churn, and 500s for about FAULT_SHARE of the requests of the last one."""
        rng = self.rng
        for _ in range(CHURN_EVERY_SECOND["replaced"]):
            gone = self.ids.pop(rng.randrange(len(self.ids)))
            self.fake.remove_image(*CHURN_SCOPE, gone)
            self._add()
        for image_id in rng.sample(self.ids, CHURN_EVERY_SECOND["status"]):
            self.fake.update_image(*CHURN_SCOPE, image_id, status=rng.choice(STATUSES))
        for image_id in rng.sample(self.ids, CHURN_EVERY_SECOND["lock"]):
            self._lock(image_id)
        report.churn.update(CHURN_EVERY_SECOND)
        # one 500 for each FAULT_SHARE of the last second's requests, on the same kind of request
        for path in self.fake.requests[self._requests :]:
            if rng.random() < FAULT_SHARE:
                self.fake.inject("/tasks/" if "/tasks/" in path else r"/images\?", 500)
                report.faults += 1
        self._requests = len(self.fake.requests)


async def churn_soak(seconds: float, images: int, seed: int) -> ChurnReport:
    rng = random.Random(seed)
    fake = FakeGcore(api_key=f"churn-key-{rng.randrange(10**9)}")
    account = BusyAccount(fake, rng, images)
    runner, fake_url = await serve_fake(fake)
    report = ChurnReport(images=images)
    with tempfile.TemporaryDirectory(prefix="churn-") as work:
        config, key = Path(work) / "config.yaml", Path(work) / "api-key"
        project, region = CHURN_SCOPE
        lines = [f"targets: [{project}/{region}]", "interval: 1s", "log_level: debug"]
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        write_key(key, fake.api_key)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GCORE_")}
        env |= {"GCORE_BASE_URL": fake_url, "GCORE_API_KEY_FILE": str(key)}
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "exporter", "--config", str(config)),
            *("--listen", f"127.0.0.1:{port}", "--log-format", "json"),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        daemon = Daemon(process)
        try:
            await churn(daemon, account, report, f"http://127.0.0.1:{port}", seconds)
        finally:
            report.exit_code = await daemon.stop() if process.returncode is None else None
            report.stray_lines = daemon.stray[:20]
            await runner.cleanup()
    report.requests = len(fake.requests)
    report.rounds = daemon.events["poll done"]
    report.full_collections = daemon.events["full collection"]
    report.unexpected_errors = len(daemon.errors) + daemon.events["unexpected error while polling"]
    return report


async def churn(
    daemon: Daemon, account: BusyAccount, report: ChurnReport, url: str, seconds: float
) -> None:
    """A second of churn, a scrape and four samples of RSS, every second for `seconds`."""
    samples: list[tuple[float, Sample]] = []
    async with aiohttp.ClientSession() as http:
        await until_ready(http, url, daemon)
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            if daemon.process.returncode is not None:
                raise RuntimeError(f"the exporter stopped: {daemon.stray[-5:]}")
            account.second(report)
            async with http.get(url + "/metrics", headers={"Accept-Encoding": "identity"}) as got:
                body = await got.read()
            report.exposition_mib = round(len(body) / 2**20, 1)
            report.images_end = exported(body)
            report.scrapes += 1
            for _ in range(4):
                samples.append((time.monotonic() - started, daemon.sample()))
                await asyncio.sleep(0.25)  # the pace of the churn: a second in four samples
    report.seconds = round(elapsed, 1)
    report.cpu_millicores = round(1000 * daemon.cpu_seconds() / elapsed)

    def median(until: float) -> float:
        window = sorted(s.rss_mib for at, s in samples if until - RSS_WINDOW <= at <= until)
        return round(window[len(window) // 2], 1)

    report.rss_mib_30s, report.rss_mib_end = median(min(30.0, elapsed)), median(elapsed)
    report.growth_percent = round(100 * (report.rss_mib_end / report.rss_mib_30s - 1), 1)
    report.rss_mib_peak = round(max(s.rss_mib for _, s in samples), 1)
    report.fds_end, report.tasks_end = samples[-1][1].fds, samples[-1][1].tasks or 0


def exported(body: bytes) -> int:
    """The daemon's `gcore_exporter_images` in a text body."""
    for line in body.decode().splitlines():
        if line.startswith("gcore_exporter_images "):
            return int(float(line.split()[1]))
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--images", type=int, help="default 300, or 2,000 with --churn")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--churn", action="store_true", help="a busy account (see above)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    if args.churn:
        churned = asyncio.run(churn_soak(args.seconds, args.images or 2000, args.seed))
        print(json.dumps(vars(churned)) if args.json else churned.lines())
        return
    report = asyncio.run(soak(args.seconds, args.images or 300, args.seed))
    if args.json:
        print(json.dumps(vars(report)))
    else:
        print_report(report)


if __name__ == "__main__":
    main()
