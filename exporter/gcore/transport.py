"""Sends requests to the Gcore Cloud API: the one owner of retries, the rate-limit gate and the key.

Every request passes a global concurrency cap and a global rate-limit gate (Gcore limits per
account, so one 429 pauses everything). Failures become `FetchError`s with a reason from a closed
set; their messages carry Gcore's `message` and `request_id`, never the key. Every byte of an
answer is untrusted: ids go into exactly one escaped path segment, bodies are read in a stream up
to a cap, and any body that does not decode is `invalid_response`.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol
from urllib.parse import quote

import aiohttp
import structlog
from pydantic import SecretStr
from yarl import URL

from exporter.config.keys import KeySource
from exporter.gcore.models import clean_text
from exporter.vocabulary import Endpoint, FetchError, Reason

Params = Mapping[str, int] | Sequence[tuple[str, str | int]]
log = structlog.get_logger(__name__)
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


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytearray
    headers: Mapping[str, str]


class ApiObserver(Protocol):
    """Who counts the requests (the exporter's telemetry); named here so that this package
    depends on no metrics code."""

    def request_done(self, endpoint: Endpoint, code: str, seconds: float) -> None: ...

    def request_retried(self, endpoint: Endpoint) -> None: ...

    def rate_limit_pause_started(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Proxy:
    """A forward proxy for every request (without one, aiohttp follows HTTPS_PROXY, HTTP_PROXY and
    NO_PROXY): its URL holds no credentials, the header does and is never shown."""

    url: URL
    authorization: str | None = field(default=None, repr=False)

    def headers(self) -> dict[str, str] | None:
        return None if self.authorization is None else {"Proxy-Authorization": self.authorization}


class Transport:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        api_key: SecretStr | KeySource,
        *,
        timeout: float,
        concurrency: int,
        max_response_size: int,
        telemetry: ApiObserver,
        retry: RetryPolicy | None = None,
        gate: RateGate | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        proxy: Proxy | None = None,
    ) -> None:
        self._session = session
        self._proxy = proxy.url if proxy else None
        # aiohttp sends `proxy_headers` with a CONNECT only: to an http:// API (loopback), the
        # proxy reads the request itself. Never both: inside a tunnel the headers reach Gcore.
        tunnelled = URL(base_url).scheme == "https"
        via = proxy.headers() if proxy else None
        self._proxy_headers = via if tunnelled else None
        self._plain_headers = {} if tunnelled or via is None else via
        self._base_url = str(URL(base_url.rstrip("/")))  # encoded: segments are appended as is
        self._max_body = max_response_size
        self._keys = api_key if isinstance(api_key, KeySource) else KeySource(api_key)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._slots = asyncio.Semaphore(concurrency)
        self._telemetry = telemetry
        self._retry = retry or RetryPolicy()
        self.gate = gate or RateGate()
        self._sleep = sleep
        self._jitter = jitter

    def __repr__(self) -> str:
        return f"Transport(base_url={self._base_url!r})"

    def url(self, *segments: str) -> URL:
        """The base URL and `segments`, each (an id, say) exactly one escaped path segment."""
        return URL(f"{self._base_url}/{'/'.join(map(_segment, segments))}", encoded=True)

    async def get_json(self, endpoint: Endpoint, url: URL, params: Params | None = None) -> Any:
        policy = self._retry
        started = time.monotonic()
        for attempt in range(1, policy.attempts + 1):
            answer: _Answer | None = None
            try:
                answer = await self._send(endpoint, url, params)
            except FetchError as exc:
                error = exc
            else:
                if 200 <= answer.status < 300:
                    return _decode(answer)
                error = _http_error(answer)
                if answer.status == 429:
                    self._pause(answer.headers, attempt)
            try:
                retryable = _should_retry(error, answer)
                if not retryable or attempt == policy.attempts:
                    raise error
                delay = 0.0 if error.reason == "rate_limited" else self._backoff(attempt)
                if time.monotonic() - started + delay + self.gate.remaining > policy.budget:
                    raise error
            finally:  # raised, its traceback holds this frame: a cycle if the frame held it too
                del error
            self._telemetry.request_retried(endpoint)
            await self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(self, endpoint: Endpoint, url: URL, params: Params | None) -> _Answer:
        headers = {
            "Authorization": f"APIKey {self._keys.current.get_secret_value()}",
            **self._plain_headers,
        }
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
                    proxy=self._proxy,
                    proxy_headers=self._proxy_headers,
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
                self._telemetry.request_done(endpoint, code, time.monotonic() - started)

    def _pause(self, headers: Mapping[str, str], attempt: int) -> None:
        seconds = _server_delay(headers)
        if seconds is not None and seconds > self._retry.max_pause and not self.gate.remaining:
            sent = headers.get("retry-after-ms") or headers.get("Retry-After")
            log.warning(
                "Retry-After above the cap", retry_after=sent, paused_for=self._retry.max_pause
            )
        if seconds is None:
            seconds = self._backoff(attempt + 1)
        # at least a second: a Retry-After of 0 or in the past must not turn into a tight loop
        self.gate.pause(min(max(seconds, 1.0), self._retry.max_pause))
        self._telemetry.rate_limit_pause_started()

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
            "invalid_response", f"{shown(value)} cannot be a Gcore id: not requested"
        ) from None


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


def _should_retry(error: FetchError, answer: _Answer | None) -> bool:
    """Whether `error` is worth another try: the server's `x-should-retry: true|false` decides
    when an HTTP answer carries it, as in Gcore's SDK (`_base_client.py`); else the reason."""
    if answer is not None:
        said = answer.headers.get("x-should-retry")
        if said == "true":
            return True
        if said == "false":
            return False
    return error.reason in _RETRYABLE


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


def shown(value: str) -> str:
    """An id from an answer, fit for a message: escaped and short."""
    return repr(clean_text(value[:100]))
