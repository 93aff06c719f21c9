"""A wall clock that stands still, so that times and ages in tests are exact."""

from __future__ import annotations

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z: where the wall clock of in-process exporters starts


class Clock:
    """A wall clock that moves only when a test moves it."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
