"""Listing health per scope: `discovery_up`, the last success, and the count per state."""

from __future__ import annotations

from support.clock import Clock

from exporter.metrics.scope_health import ScopeHealth
from exporter.metrics.telemetry import Telemetry
from exporter.vocabulary import Scope

SCOPE = Scope(1, 10)
LABELS = {"project_id": "1", "region_id": "10", "kind": "virtual", "endpoint": "images"}


def sample(telemetry: Telemetry, name: str) -> float | None:
    return telemetry.registry.get_sample_value(name, LABELS)


def test_a_scope_is_failing_until_listed_then_remembers_when() -> None:
    telemetry, clock = Telemetry(), Clock()
    health = ScopeHealth(telemetry, clock)
    health.watch(SCOPE)
    assert sample(telemetry, "gcore_exporter_discovery_up") == 0
    assert sample(telemetry, "gcore_exporter_discovery_last_success_timestamp_seconds") is None
    health.mark(SCOPE, "ok")
    assert sample(telemetry, "gcore_exporter_discovery_up") == 1
    assert sample(telemetry, "gcore_exporter_discovery_last_success_timestamp_seconds") == clock.now
    assert health.count("ok") == 1


def test_a_scope_that_turns_out_unavailable_has_no_last_listing() -> None:
    telemetry = Telemetry()
    health = ScopeHealth(telemetry, Clock())
    health.mark(SCOPE, "ok")
    health.mark(SCOPE, "unavailable")
    assert sample(telemetry, "gcore_exporter_discovery_up") == 1  # no GPU service is no failure
    assert sample(telemetry, "gcore_exporter_discovery_last_success_timestamp_seconds") is None
    health.forget(SCOPE)
    assert sample(telemetry, "gcore_exporter_discovery_up") is None
