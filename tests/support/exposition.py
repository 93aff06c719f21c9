"""A scrape as a dictionary of samples, and the one value a test asks for."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_samples(text: str) -> Samples:
    """Every sample of an exposition, keyed by name and labels; duplicates fail the test."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    """The value of the one sample of `name` whose labels include `labels`, None if none."""
    found = [v for (n, ls), v in samples.items() if n == metric and set(labels.items()) <= ls]
    assert len(found) <= 1, f"{metric}{labels} matches {len(found)} series"
    return found[0] if found else None


def series(samples: Samples, metric: str, /, **labels: str) -> list[dict[str, str]]:
    return [dict(ls) for (n, ls) in samples if n == metric and set(labels.items()) <= ls]
