"""Talks to the Gcore Cloud API: the only module that sends requests, and the one owner of retries.

Every request passes a global concurrency cap and a global rate-limit gate (Gcore limits per
account, so one 429 pauses everything). Failures become `FetchError`s with a reason from a closed
set; their messages carry Gcore's `message` and `request_id`, never the key.

Every byte of an answer is untrusted: ids from answers go into exactly one escaped path segment,
bodies are read in a stream up to a cap, and any body that does not decode is `invalid_response`.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal
from urllib.parse import quote

import aiohttp
from pydantic import SecretStr, ValidationError
from yarl import URL

from exporter.models import Image, ImagePage, Task, clean_text
from exporter.telemetry import Telemetry
from exporter.vocabulary import YIELD_EVERY, FetchError, ImageKey, Reason, Scope

Endpoint = Literal["images", "image", "task"]
PAGE_SIZE: Final = 1000
_IMAGES: Final = ("cloud", "v3", "gpu", "virtual")
PAGE_MARGIN: Final = 2  # pages a listing may take beyond what its first `count` allows
_MAX_ITEMS: Final = 10_000_000  # a bound on pagination, whatever `count` claims
_ERROR_BODY: Final = 64 * 1024  # an error body is read this far: only its message is wanted


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


Ending = Literal["ran_out", "stuck", "bounded"]
"""Why a listing stopped: its pages ran out (it is whole), a page brought no new id (the server
ignores `offset`), or it took every page its `count` allows plus a margin."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a scope's image list, validated item by item: one bad image sinks no page."""

    count: int  # how many images the server says the whole list holds, as of this page
    images: tuple[Image, ...]
    invalid: tuple[tuple[str | None, str], ...]  # (id when there is one, what is wrong)
    ending: Ending | None = None  # set on the last page only


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytearray
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
        max_response_size: int,
        telemetry: Telemetry,
        retry: RetryPolicy | None = None,
        gate: RateGate | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._session = session
        self._base_url = str(URL(base_url.rstrip("/")))  # encoded: segments are appended as is
        self._max_body = max_response_size
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
        url = self._url(
            *_IMAGES, str(scope.project_id), str(scope.region_id), "images", key.image_id
        )
        data = await self._get_json("image", url)
        try:
            image = Image.model_validate(data)
        except ValidationError as exc:
            raise FetchError("invalid_response", f"image: {_summary(exc)}") from None
        if image.id != key.image_id:
            raise FetchError(
                "invalid_response", f"asked for image {key.image_id}, got {_shown(image.id)}"
            )
        return image

    async def list_pages(self, scope: Scope) -> AsyncIterator[Page]:
        """Page through a scope's images by offset until the pages run out, whatever `count` says.

        Pages are yielded as they arrive so that a caller can render and drop them: holding a
        50,000-image listing at once costs memory and long garbage-collector pauses. The last
        page carries the listing's `ending`. A page that brings no new id ends the listing (a
        server ignoring `offset` would send the same page forever), and so does the page limit:
        what the first page's `count` and length allow, plus `PAGE_MARGIN`.
        """
        url = self._url(*_IMAGES, str(scope.project_id), str(scope.region_id), "images")
        offset = pages = 0
        limit: int | None = None
        ids: set[str] = set()
        while True:
            data = await self._get_json("images", url, {"limit": PAGE_SIZE, "offset": offset})
            try:
                page = ImagePage.model_validate(data)
            except ValidationError as exc:
                raise FetchError("invalid_response", f"image list: {_summary(exc)}") from None
            images: list[Image] = []
            invalid: list[tuple[str | None, str]] = []
            new = 0
            for number, raw in enumerate(page.results, 1):
                if number % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # validating a big page must not starve scrapes
                try:
                    image = Image.model_validate(raw)
                except ValidationError as exc:
                    raw_id = raw.get("id") if isinstance(raw, dict) else None
                    item_id = clean_text(raw_id) if isinstance(raw_id, str) else None
                    invalid.append((item_id, _summary(exc)))
                else:
                    images.append(image)
                    item_id = image.id
                if item_id is not None and item_id not in ids:
                    ids.add(item_id)
                    new += 1
            offset += len(page.results)
            pages += 1
            if limit is None and page.results:
                limit = -(-max(page.count, 0) // len(page.results)) + PAGE_MARGIN
            ending = _ending(page, offset, new, pages, limit)
            yield Page(page.count, tuple(images), tuple(invalid), ending)
            if ending is not None:
                return

    async def get_task(self, task_id: str) -> Task:
        data = await self._get_json("task", self._url("cloud", "v1", "tasks", task_id))
        try:
            return Task.model_validate(data)
        except ValidationError as exc:
            raise FetchError("invalid_response", f"task: {_summary(exc)}") from None

    def _url(self, *segments: str) -> URL:
        """The base URL and `segments`, each (an id, say) exactly one escaped path segment."""
        return URL(f"{self._base_url}/{'/'.join(map(_segment, segments))}", encoded=True)

    async def _get_json(
        self, endpoint: Endpoint, url: URL, params: Mapping[str, int] | None = None
    ) -> Any:
        policy = self._retry
        started = time.monotonic()
        for attempt in range(1, policy.attempts + 1):
            try:
                answer = await self._send(endpoint, url, params)
            except FetchError as exc:
                error = exc
            else:
                if 200 <= answer.status < 300:
                    return _decode(answer)
                error = _http_error(answer)
                if answer.status == 429:
                    self._pause(_server_delay(answer.headers), attempt)
            retryable = error.reason in _RETRYABLE
            if not retryable or attempt == policy.attempts:
                raise error
            delay = 0.0 if error.reason == "rate_limited" else self._backoff(attempt)
            if time.monotonic() - started + delay + self.gate.remaining > policy.budget:
                raise error
            self._telemetry.api_retries.labels(endpoint).inc()
            await self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(
        self, endpoint: Endpoint, url: URL, params: Mapping[str, int] | None
    ) -> _Answer:
        headers = {"Authorization": f"APIKey {self._api_key.get_secret_value()}"}
        async with self._slots:
            await self.gate.wait()  # inside the slot: requests queued before a 429 wait too
            started = time.monotonic()
            code = "connection"
            try:
                async with self._session.get(
                    url,
                    params=params,
                    headers=headers,
                    timeout=self._timeout,
                    allow_redirects=False,  # the key goes to the configured host only
                ) as response:
                    code = str(response.status)
                    ok = 200 <= response.status < 300
                    body = await _read(response.content, self._max_body, strict=ok)
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

    def _pause(self, seconds: float | None, attempt: int) -> None:
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


def _segment(value: str) -> str:
    """One path segment that no id can turn into another path, a query or a fragment."""
    if value in ("", ".", ".."):  # dot segments are resolved away by URL normalisation
        raise FetchError("invalid_response", f"{value!r} cannot be a Gcore id: not requested")
    try:
        return quote(value, safe="")
    except UnicodeEncodeError:
        raise FetchError(
            "invalid_response", f"{_shown(value)} cannot be a Gcore id: not requested"
        ) from None


def _ending(page: ImagePage, offset: int, new: int, pages: int, limit: int | None) -> Ending | None:
    """Whether a listing ends after `page` (`offset` items in), and why."""
    if not page.results:
        return "ran_out"
    if new == 0:
        return "stuck"
    # A page short of the limit that ends where `count` says is the end. Otherwise (a full page,
    # or `count` disagrees with the pages) only an empty page proves that nothing follows.
    if offset == page.count and len(page.results) != PAGE_SIZE:
        return "ran_out"
    if (limit is not None and pages >= limit) or offset >= _MAX_ITEMS:
        return "bounded"
    return None


async def _read(content: aiohttp.StreamReader, limit: int, *, strict: bool) -> bytearray:
    """The decoded body, read in a stream up to `limit` bytes; past it, an error (`strict`) or
    the first bytes of an error body (whose message is all we want)."""
    cap = limit if strict else min(limit, _ERROR_BODY)
    body = bytearray()
    async for chunk in content.iter_any():
        body += chunk
        if len(body) > cap:
            if strict:
                raise FetchError(
                    "invalid_response", f"body larger than {limit} bytes (max_response_size)"
                )
            del body[cap:]
            break
    return body


def _server_delay(headers: Mapping[str, str]) -> float | None:
    """The wait a 429 asks for: `retry-after-ms` first (as Gcore's SDK reads it), then
    `Retry-After`."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            seconds = float(millis) / 1000
        except ValueError:
            pass
        else:
            if not math.isnan(seconds):
                return max(0.0, seconds)
    return _retry_after_seconds(headers.get("Retry-After"))


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
    409: "server_error",  # a lock timeout on Gcore's side, retried as the SDK does
    429: "rate_limited",
}
_RETRYABLE: Final = frozenset({"server_error", "timeout", "connection", "rate_limited"})


def _http_error(answer: _Answer) -> FetchError:
    reason = _STATUS_REASONS.get(answer.status)
    if reason is None:
        reason = "server_error" if answer.status >= 500 else "invalid_response"
    message = f"HTTP {answer.status}"
    if 300 <= answer.status < 400:
        message += " (redirect, not followed)"
    request_id = None
    try:
        body = json.loads(answer.body)
    except (ValueError, RecursionError):
        body = None
    if isinstance(body, dict):
        parts = [clean_text(body[k]) for k in ("exception_class", "message") if _is_text(body, k)]
        message = ": ".join([message, *parts])[:500]
        request_id = clean_text(body["request_id"])[:100] if _is_text(body, "request_id") else None
    elif answer.body:
        message += " (non-JSON body)"
    return FetchError(reason, message, status=answer.status, request_id=request_id)


def _is_text(body: dict[Any, Any], key: str) -> bool:
    value = body.get(key)
    return isinstance(value, str) and value != ""


def _decode(answer: _Answer) -> Any:
    """The body as JSON; any failure (syntax, encoding, nesting too deep, an integer of more
    digits than Python converts) makes the answer invalid, never an unexpected error."""
    try:
        return json.loads(answer.body)
    except (ValueError, RecursionError):
        raise FetchError("invalid_response", "body is not JSON", status=answer.status) from None


def _shown(value: str) -> str:
    """An id from an answer, fit for a message: escaped and short."""
    return repr(clean_text(value[:100]))


def _summary(exc: ValidationError) -> str:
    first = exc.errors()[0]
    location = ".".join(str(p) for p in first["loc"]) or "body"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{location}: {first['msg']}{more}"
