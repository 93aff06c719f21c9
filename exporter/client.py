"""Talks to the Gcore Cloud API: the only module that sends requests, and the one owner of retries.

Every request passes a global concurrency cap and a global rate-limit gate (Gcore limits per
account, so one 429 pauses everything). Failures become `FetchError`s with a reason from a closed
set; their messages carry Gcore's `message` and `request_id`, never the key.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

import aiohttp
import structlog
from pydantic import SecretStr, ValidationError

from exporter.models import Image, ImagePage, Task
from exporter.telemetry import Telemetry
from exporter.vocabulary import YIELD_EVERY, FetchError, ImageKey, Reason, Scope

Endpoint = Literal["images", "image", "task"]
PAGE_SIZE: Final = 1000
_MAX_ITEMS: Final = 10_000_000  # a bound on pagination, whatever `count` claims
log = structlog.get_logger("exporter.client")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 3
    backoff_base: float = 0.5
    backoff_cap: float = 8.0
    max_pause: float = 300.0
    budget: float = 60.0  # no retry is started after this many seconds into one call


class RateGate:
    """Holds every request back until a 429's `Retry-After` has passed."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._until = 0.0

    @property
    def remaining(self) -> float:
        return max(0.0, self._until - self._clock())

    def pause(self, seconds: float) -> None:
        self._until = max(self._until, self._clock() + seconds)

    async def wait(self) -> None:
        delay = self.remaining
        while delay > 0:  # a pause can be extended while we wait
            await self._sleep(delay)
            delay = self.remaining


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a scope's image list, validated item by item: one bad image sinks no page."""

    count: int  # how many images the server says the whole list holds, as of this page
    images: tuple[Image, ...]
    invalid: tuple[tuple[str | None, str], ...]  # (id when there is one, what is wrong)


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes
    headers: Mapping[str, str]


class GcoreClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        api_key: SecretStr,
        *,
        timeout: float,
        concurrency: int,
        telemetry: Telemetry,
        retry: RetryPolicy | None = None,
        gate: RateGate | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._slots = asyncio.Semaphore(concurrency)
        self._telemetry = telemetry
        self._retry = retry or RetryPolicy()
        self.gate = gate or RateGate()
        self._sleep = sleep
        self._jitter = jitter

    def __repr__(self) -> str:
        return f"GcoreClient(base_url={self._base_url!r})"

    async def get_image(self, key: ImageKey) -> Image:
        scope = key.scope
        path = f"/cloud/v3/gpu/virtual/{scope.project_id}/{scope.region_id}/images/{key.image_id}"
        data = await self._get_json("image", path)
        try:
            image = Image.model_validate(data)
        except ValidationError as exc:
            raise FetchError("invalid_response", f"image: {_summary(exc)}") from None
        if image.id != key.image_id:
            raise FetchError("invalid_response", f"asked for image {key.image_id}, got {image.id}")
        return image

    async def list_pages(self, scope: Scope) -> AsyncIterator[Page]:
        """Page through a scope's images by offset until `count` items have come.

        Pages are yielded as they arrive so that a caller can render and drop them: holding a
        50,000-image listing at once costs memory and long garbage-collector pauses.
        """
        path = f"/cloud/v3/gpu/virtual/{scope.project_id}/{scope.region_id}/images"
        offset = 0
        while offset < _MAX_ITEMS:
            data = await self._get_json("images", path, {"limit": PAGE_SIZE, "offset": offset})
            try:
                page = ImagePage.model_validate(data)
            except ValidationError as exc:
                raise FetchError("invalid_response", f"image list: {_summary(exc)}") from None
            images: list[Image] = []
            invalid: list[tuple[str | None, str]] = []
            for number, raw in enumerate(page.results, 1):
                if number % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # validating a big page must not starve scrapes
                try:
                    images.append(Image.model_validate(raw))
                except ValidationError as exc:
                    raw_id = raw.get("id") if isinstance(raw, dict) else None
                    invalid.append((raw_id if isinstance(raw_id, str) else None, _summary(exc)))
            yield Page(page.count, tuple(images), tuple(invalid))
            offset += len(page.results)
            if not page.results or offset >= page.count:
                return

    async def get_task(self, task_id: str) -> Task:
        data = await self._get_json("task", f"/cloud/v1/tasks/{task_id}")
        try:
            return Task.model_validate(data)
        except ValidationError as exc:
            raise FetchError("invalid_response", f"task: {_summary(exc)}") from None

    async def _get_json(
        self, endpoint: Endpoint, path: str, params: Mapping[str, int] | None = None
    ) -> Any:
        policy = self._retry
        started = time.monotonic()
        for attempt in range(1, policy.attempts + 1):
            try:
                answer = await self._send(endpoint, path, params)
            except FetchError as exc:
                error = exc
            else:
                if 200 <= answer.status < 300:
                    return _decode(answer)
                error = _http_error(answer)
                if answer.status == 429:
                    self._pause(answer.headers.get("Retry-After"), attempt)
            retryable = error.reason in ("server_error", "timeout", "connection", "rate_limited")
            if not retryable or attempt == policy.attempts:
                raise error
            delay = 0.0 if error.reason == "rate_limited" else self._backoff(attempt)
            if time.monotonic() - started + delay + self.gate.remaining > policy.budget:
                raise error
            self._telemetry.api_retries.labels(endpoint).inc()
            await self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(
        self, endpoint: Endpoint, path: str, params: Mapping[str, int] | None
    ) -> _Answer:
        headers = {"Authorization": f"APIKey {self._api_key.get_secret_value()}"}
        async with self._slots:
            await self.gate.wait()  # inside the slot: requests queued before a 429 wait too
            started = time.monotonic()
            code = "connection"
            try:
                async with self._session.get(
                    self._base_url + path,
                    params=params,
                    headers=headers,
                    timeout=self._timeout,
                    allow_redirects=False,
                ) as response:
                    code = str(response.status)
                    body = await response.read()
                    return _Answer(response.status, body, response.headers)
            except TimeoutError:
                code = "timeout"
                raise FetchError("timeout", f"no answer within {self._timeout.total}s") from None
            except aiohttp.ClientError as exc:
                raise FetchError("connection", f"{type(exc).__name__}: {exc}") from None
            finally:
                self._telemetry.api_requests.labels(endpoint, code).inc()
                self._telemetry.api_request_duration.labels(endpoint).observe(
                    time.monotonic() - started
                )

    def _pause(self, retry_after: str | None, attempt: int) -> None:
        seconds = _retry_after_seconds(retry_after)
        if seconds is not None and seconds > self._retry.max_pause and not self.gate.remaining:
            log.warning(
                "Retry-After above the cap",
                retry_after=retry_after,
                paused_for=self._retry.max_pause,
            )
        if seconds is None:
            seconds = self._backoff(attempt + 1)
        # at least a second: a Retry-After of 0 or in the past must not turn into a tight loop
        self.gate.pause(min(max(seconds, 1.0), self._retry.max_pause))
        self._telemetry.rate_limit_pauses.inc()

    def _backoff(self, attempt: int) -> float:
        ceiling: float = min(
            self._retry.backoff_cap, self._retry.backoff_base * 2.0 ** (attempt - 1)
        )
        return ceiling / 2 + self._jitter() * ceiling / 2


def _retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds else None  # NaN is no answer
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta: float = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, delta)


_STATUS_REASONS: Final[Mapping[int, Reason]] = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    408: "timeout",
    429: "rate_limited",
}


def _http_error(answer: _Answer) -> FetchError:
    reason = _STATUS_REASONS.get(answer.status)
    if reason is None:
        reason = "server_error" if answer.status >= 500 else "invalid_response"
    message = f"HTTP {answer.status}"
    request_id = None
    try:
        body = json.loads(answer.body)
    except ValueError:
        body = None
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("exception_class", "message") if body.get(k)]
        message = ": ".join([message, *parts])[:500]
        request_id = str(body["request_id"]) if body.get("request_id") else None
    elif answer.body:
        message += " (non-JSON body)"
    return FetchError(reason, message, status=answer.status, request_id=request_id)


def _decode(answer: _Answer) -> Any:
    try:
        return json.loads(answer.body)
    except ValueError:
        raise FetchError("invalid_response", "body is not JSON", status=answer.status) from None


def _summary(exc: ValidationError) -> str:
    first = exc.errors()[0]
    location = ".".join(str(p) for p in first["loc"]) or "body"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{location}: {first['msg']}{more}"
