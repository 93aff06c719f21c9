"""The docs hold together: every relative link names a file that exists, every anchor a heading of
that file (as GitHub makes anchors), what restates code is generated from it (docs/generate.py),
and the README stays a page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.tooling import ROOT, load_script

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
GENERATE = load_script(ROOT / "docs" / "generate.py")
DOCS = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")])


def anchors(path: Path) -> set[str]:
    """GitHub's anchors: headings lower-cased, punctuation dropped, spaces to dashes."""
    found: set[str] = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        if heading := re.match(r"#{1,6}\s+(.*)", line):
            text = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower())
            found.add(text.replace(" ", "-"))
    return found


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in LINK.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(f"{path.name}: {target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{path.name}: {target} (no such heading)")
    return broken


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_and_anchor_resolves(path: Path) -> None:
    assert broken_links(path) == []


def test_a_broken_anchor_is_reported(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [bad](#nowhere) [gone](missing.md)\n")
    assert broken_links(page) == [
        "page.md: #nowhere (no such heading)",
        "page.md: missing.md (no such file)",
    ]


def test_the_readme_fits_on_a_page() -> None:
    assert len((ROOT / "README.md").read_bytes()) <= 20_000


def test_generated_regions_are_current() -> None:
    assert GENERATE.stale() == [], "run python3 docs/generate.py"


def test_a_stale_region_is_reported_and_rewritten_between_its_markers(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    prose = (
        "# Page\n\nBefore.\n\n<!-- BEGIN GENERATED: x -->\n{}<!-- END GENERATED: x -->\nAfter.\n"
    )
    page.write_text(prose.format("old\n"))
    regions = {"x": GENERATE.Region(page, "the code", lambda: "new")}
    assert GENERATE.stale(regions) == ["page.md: x"]
    assert GENERATE.stale(regions, write=True) == ["page.md: x"]
    fresh = "<!-- made by docs/generate.py from the code: edit that, not this -->\n\nnew\n\n"
    assert page.read_text() == prose.format(fresh)
    assert GENERATE.stale(regions) == []


def test_a_file_without_its_markers_is_an_error(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n<!-- BEGIN GENERATED: y -->\n<!-- END GENERATED: y -->\n")
    with pytest.raises(ValueError, match="0 regions 'x'"):
        GENERATE.stale({"x": GENERATE.Region(page, "the code", lambda: "new")})


def test_the_panel_list_names_every_panel_with_its_description() -> None:
    """The dashboard's own text, and the alerts' summaries, reach the docs (not only the names)."""
    dashboard = (ROOT / "docs" / "dashboard.md").read_text(encoding="utf-8")
    assert "- **Images monitored**: GPU images the exporter watches" in dashboard
    deploy = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    assert "| `GcoreGpuImageMissing` | critical | A watched GPU image no longer exists. |" in deploy
