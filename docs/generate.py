#!/usr/bin/env python3
"""Writes the parts of the docs that restate code, so that they cannot drift from it.

A generated region of a Markdown file lies between `<!-- BEGIN GENERATED: NAME -->` and
`<!-- END GENERATED: NAME -->`; everything outside the markers is hand-written and kept as is.
`python3 docs/generate.py` rewrites every region, `--check` only says which are stale (exit 1);
tests/test_docs.py runs the check.

To add a region: write a function that returns its Markdown from the code that defines it, add it
to `REGIONS` with the file it lives in, put the two markers in that file and run this script.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _script(path: Path) -> ModuleType:
    """A script of the repository (they are no package modules) imported by path."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def panels() -> str:
    """The dashboard's rows and panels, each with the description Grafana shows on hover."""
    dashboard = _script(ROOT / "grafana" / "build_dashboard.py").dashboard()
    lines: list[str] = []

    def panel(p: dict[str, Any]) -> Iterator[str]:
        if p["type"] == "row":
            yield from ("", f"### {p['title']}", "")
            for inner in p.get("panels", []):  # a collapsed row holds its panels
                yield from panel(inner)
        else:
            yield f"- **{p['title']}**: {p['description']}"

    for p in dashboard["panels"]:
        lines += panel(p)
    return "\n".join(lines).strip("\n")


def alerts() -> str:
    """One row per alerting rule: name, severity, summary, when it fires and its labels."""
    rules = _script(ROOT / "deploy" / "prometheus" / "render_rules.py")
    rows = [
        "| alert | severity | summary | fires when | labels besides the scrape's job |",
        "|---|---|---|---|---|",
    ]
    for alert in rules.ALERTS:
        cells = [f"`{alert.name}`", alert.severity, alert.summary, alert.fires_when, alert.labels]
        rows.append(f"| {' | '.join(map(_cell, cells))} |".replace("|  |", "| |"))
    return "\n".join(rows)


class Region(NamedTuple):
    path: Path
    source: str  # what to edit instead, named in the region itself
    make: Callable[[], str]


def settings() -> str:
    from exporter.config.reference import settings_table

    return settings_table()


def reload() -> str:
    from exporter.config.reference import reload_table

    return reload_table()


REGIONS: dict[str, Region] = {
    "settings": Region(DOCS / "configuration.md", "the Option of each field of Settings", settings),
    "reload": Region(DOCS / "behaviour.md", "the Option of each field of Settings", reload),
    "panels": Region(DOCS / "dashboard.md", "grafana/build_dashboard.py", panels),
    "alerts": Region(DOCS / "deploy.md", "deploy/prometheus/render_rules.py (ALERTS)", alerts),
}


def rewrite(text: str, name: str, region: Region) -> str:
    """`text` with region `name` replaced by what the code says now; fails if it has no markers."""
    pattern = re.compile(
        rf"^([ \t]*)(<!-- BEGIN GENERATED: {name} -->\n).*?^([ \t]*<!-- END GENERATED: {name} -->)",
        re.S | re.M,
    )
    note = f"<!-- made by docs/generate.py from {region.source}: edit that, not this -->"

    def body(match: re.Match[str]) -> str:
        pad = match.group(1)  # a region inside a list item is indented as the item
        lines = f"{note}\n\n{region.make()}\n".splitlines()
        shown = "\n".join(pad + line if line else line for line in lines)
        return f"{pad}{match.group(2)}{shown}\n\n{match.group(3)}"

    new, count = pattern.subn(body, text)
    if count != 1:
        raise ValueError(f"{region.path.name}: {count} regions {name!r}, expected 1")
    return new


def stale(regions: dict[str, Region] = REGIONS, *, write: bool = False) -> list[str]:
    """The regions whose file differs from what the code says (rewritten with `write`)."""
    found = []
    for name, region in regions.items():
        text = region.path.read_text(encoding="utf-8")
        new = rewrite(text, name, region)
        if new != text:
            found.append(f"{region.path.name}: {name}")
            if write:
                region.path.write_text(new, encoding="utf-8")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say what is stale (exit 1)")
    args = parser.parse_args(argv)
    found = stale(write=not args.check)
    for entry in found:
        print(f"{'stale' if args.check else 'rewrote'}: {entry}", file=sys.stderr)
    return 1 if args.check and found else 0


if __name__ == "__main__":
    sys.exit(main())
