"""Whether each watched scope's image listing works, as `discovery_up` and a count per state.

A scope is `failing` until its first listing succeeds, `ok` after a successful one, and
`unavailable` when a discovered scope answers 404: a region without that GPU service, which is
no error (its `discovery_up` is 1). Account-wide listings (projects, regions, tasks) report
through `account_up` with empty ids and kind, so one `discovery_up == 0` alert covers every listing.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Final, Literal, get_args

from exporter.metrics.telemetry import Telemetry
from exporter.vocabulary import Scope

State = Literal["ok", "failing", "unavailable"]
AccountEndpoint = Literal["projects", "regions", "tasks"]
STATES: Final[tuple[State, ...]] = get_args(State)


def _labels(scope: Scope) -> tuple[str, str, str, str]:
    return str(scope.project_id), str(scope.region_id), scope.kind, "images"


class ScopeHealth:
    def __init__(self, telemetry: Telemetry, clock: Callable[[], float] = time.time) -> None:
        self._up = telemetry.discovery_up
        self._last_success = telemetry.discovery_last_success
        self._now = clock
        self._listed: set[Scope] = set()  # scopes with a last-success series
        self._states: dict[Scope, State] = {}
        for state in STATES:
            telemetry.scopes.labels(state).set_function(functools.partial(self.count, state))

    def count(self, state: State) -> int:
        return sum(1 for s in self._states.values() if s == state)

    def state(self, scope: Scope) -> State | None:
        return self._states.get(scope)

    def watch(self, scope: Scope) -> None:
        """A scope to list from now on: failing until its first listing succeeds."""
        if scope not in self._states:
            self.mark(scope, "failing")

    def mark(self, scope: Scope, state: State) -> bool:
        """Record the outcome of a listing; True if the scope's state changed."""
        changed = self._states.get(scope) != state
        self._states[scope] = state
        self._up.labels(*_labels(scope)).set(int(state != "failing"))
        if state == "ok":
            self._listed.add(scope)
            self._last_success.labels(*_labels(scope)).set(self._now())
        elif state == "unavailable" and scope in self._listed:  # no service: nothing to list
            self._listed.discard(scope)
            self._last_success.remove(*_labels(scope))
        return changed

    def forget(self, scope: Scope) -> None:
        """A scope no longer watched leaves the metrics."""
        if self._states.pop(scope, None) is not None:
            self._up.remove(*_labels(scope))
            if scope in self._listed:
                self._listed.discard(scope)
                self._last_success.remove(*_labels(scope))


def account_up(
    telemetry: Telemetry, endpoint: AccountEndpoint, ok: bool, now: Callable[[], float] = time.time
) -> None:
    """Record an account-wide listing's outcome."""
    telemetry.discovery_up.labels("", "", "", endpoint).set(int(ok))
    if ok:
        telemetry.discovery_last_success.labels("", "", "", endpoint).set(now())
