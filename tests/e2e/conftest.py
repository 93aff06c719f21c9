"""Fixtures of the end-to-end tests: both scenarios run side by side, each with its own stack."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.tooling import load_render_rules, require_tool

from .harness import Stack, running, wait_for
from .scenarios import THRESHOLDS, Scenario, failing, healthy

STEP_TIMEOUT = 30.0


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    """The Prometheus server; its absence fails CI (which installs it) and skips elsewhere."""
    return require_tool("prometheus", "Debian: apt-get install prometheus; .ci/run installs it")


@pytest.fixture(scope="session")
def rules() -> str:
    """deploy/prometheus/rules.yaml with every threshold shortened to the scenarios' THRESHOLDS
    via render_rules.render(), which rejects a name it does not know."""
    module = load_render_rules()
    missing = sorted(set(module.DEFAULTS) - set(THRESHOLDS))
    assert not missing, f"scenarios.THRESHOLDS has no short value for {missing}"
    return str(module.render(THRESHOLDS))


def _stack(scenario: Scenario, root: Path, rules: str, binary: str) -> Stack:
    return Stack(
        name=scenario.name,
        workdir=root / scenario.name,
        fake=scenario.fake,
        targets=scenario.targets,
        rules=rules,
        prometheus_binary=binary,
        dead_targets=int(scenario.dead_target),
        replicas=scenario.replicas,
    )


def _drive(pairs: list[tuple[Scenario, Stack]]) -> None:
    """Run the scenarios' steps side by side, each once Prometheus shows its condition."""
    queues = [(stack, list(scenario.steps)) for scenario, stack in pairs]

    def advance() -> bool:
        for stack, steps in queues:
            while steps and stack.prom.query(steps[0].expr):
                assert stack.api_server is not None
                stack.api_server.mutate(steps.pop(0).change)
        return not any(steps for _, steps in queues)

    def waiting() -> str:
        left = [
            f"{stack.name}: {steps[0].what} ({steps[0].expr})" for stack, steps in queues if steps
        ]
        return "\n".join([*left, *(stack.diagnostics() for stack, _ in queues)])

    wait_for("the scenario steps", advance, STEP_TIMEOUT, details=waiting)


@pytest.fixture(scope="module")
def scenarios(
    tmp_path_factory: pytest.TempPathFactory, prometheus_binary: str, rules: str
) -> Iterator[dict[str, tuple[Scenario, Stack]]]:
    """Both scenarios running: fake API, exporter and Prometheus each; all stopped afterwards."""
    root = tmp_path_factory.mktemp("e2e")
    pairs = [(s, _stack(s, root, rules, prometheus_binary)) for s in (failing(), healthy())]
    try:
        with running([stack for _, stack in pairs]):
            _drive(pairs)
            yield {scenario.name: (scenario, stack) for scenario, stack in pairs}
    finally:
        for _, stack in pairs:  # TSDB blocks are large and useless after the run; logs stay
            shutil.rmtree(stack.workdir / "data", ignore_errors=True)
