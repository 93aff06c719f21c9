"""The task cache: one lookup per task id at a time, expiry, and answers that do not fit."""

from __future__ import annotations

import asyncio

from support.clock import Clock

from exporter.gcore.models import Image, Task
from exporter.polling.task_cache import TaskCache
from exporter.vocabulary import FetchError


class Lookups:
    """A Tasks API stand-in that counts calls and can be held until released."""

    def __init__(self, answer_id: str | None = None, error: FetchError | None = None) -> None:
        self.calls: list[str] = []
        self.release = asyncio.Event()
        self.release.set()
        self._answer_id = answer_id
        self._error = error

    async def __call__(self, task_id: str) -> Task:
        self.calls.append(task_id)
        await self.release.wait()
        if self._error is not None:
            raise self._error
        return Task(id=self._answer_id or task_id, state="RUNNING")


def locked(task_id: str | None, image_id: str = "img") -> Image:
    return Image.model_validate(
        {
            "id": image_id,
            "name": image_id,
            "status": "saving",
            "created_at": "2026-01-01T00:00:00",
            "updated_at": "2026-01-01T00:00:00",
            "task_id": task_id,
        }
    )


async def test_concurrent_callers_share_one_lookup() -> None:
    lookups = Lookups()
    lookups.release.clear()
    cache = TaskCache(lookups, ttl=60, clock=Clock(1000.0))
    waiting = [asyncio.ensure_future(cache.lock_of(locked("t-1", f"i{n}"))) for n in range(5)]
    await asyncio.sleep(0)  # let every caller reach the shared lookup
    lookups.release.set()
    found = await asyncio.wait_for(asyncio.gather(*waiting), 5)
    assert lookups.calls == ["t-1"]
    assert {task.id for task in found if task} == {"t-1"}


async def test_an_unlocked_image_needs_no_lookup() -> None:
    lookups = Lookups()
    cache = TaskCache(lookups, ttl=60, clock=Clock(1000.0))
    assert await cache.lock_of(locked(None)) is None
    assert lookups.calls == []


async def test_entries_are_looked_up_again_after_their_ttl_and_expire_later() -> None:
    lookups, clock = Lookups(), Clock(1000.0)
    cache = TaskCache(lookups, ttl=60, clock=clock)
    await cache.lock_of(locked("t-1"))
    clock.now += 60
    await cache.lock_of(locked("t-1"))
    assert lookups.calls == ["t-1"]
    clock.now += 1
    await cache.lock_of(locked("t-1"))
    assert lookups.calls == ["t-1", "t-1"]
    clock.now += 121
    cache.expire()
    assert len(cache) == 0


async def test_an_answer_about_another_task_is_no_answer() -> None:
    cache = TaskCache(Lookups(answer_id="t-other"), ttl=60, clock=Clock(1000.0))
    assert await cache.lock_of(locked("t-1")) is None


async def test_a_failed_lookup_is_no_answer_and_is_reported() -> None:
    failures: list[FetchError] = []
    problem = FetchError("not_found", "HTTP 404")
    cache = TaskCache(
        Lookups(error=problem), ttl=60, on_failure=failures.append, clock=Clock(1000.0)
    )
    assert await cache.lock_of(locked("t-1")) is None
    assert failures == [problem]


async def test_close_cancels_lookups_that_expired_while_running() -> None:
    lookups, clock = Lookups(), Clock()
    lookups.release.clear()  # the lookup hangs, as a held answer does
    cache = TaskCache(lookups, ttl=60, clock=clock)
    caller = asyncio.ensure_future(cache.lock_of(locked("t-1")))
    await asyncio.sleep(0)  # the lookup starts
    clock.now += 121
    cache.expire()  # forgotten, still running
    assert len(cache) == 0
    caller.cancel()
    await cache.close()
    assert asyncio.all_tasks() == {asyncio.current_task()}  # nothing outlives the cache


async def test_a_closed_cache_starts_no_lookup_and_a_broken_one_is_no_answer() -> None:
    lookups = Lookups(error=None)
    cache = TaskCache(lookups, ttl=60, clock=Clock(1000.0))
    await cache.close()
    assert await cache.lock_of(locked("t-1")) is None
    assert lookups.calls == []

    async def closed_session(task_id: str) -> Task:
        raise RuntimeError("Session is closed")

    broken = TaskCache(closed_session, ttl=60, clock=Clock(1000.0))
    assert await broken.lock_of(locked("t-1")) is None  # never an exception nobody retrieves
