"""The manual's tables that restate the settings, generated from what each field declares.

`python -m exporter.config.reference` rewrites the marked regions of docs/configuration.md and
docs/behaviour.md in place; a test fails while a committed file differs from what it would write.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from exporter.config.options import Option, Reload, declared, env_name
from exporter.config.settings import Settings

END = "<!-- END GENERATED -->"


def _begin(name: str) -> str:
    return f"<!-- BEGIN GENERATED: {name} -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _flag(option: Option) -> str:
    if option.flag is None:
        return ""
    shown = f"`{option.flag} {option.metavar}`" if option.metavar else f"`{option.flag}`"
    shown += " (repeatable)" if option.repeatable else ""
    return shown + "".join(f" (was `{old}`)" for old in option.old_flags)


def settings_table() -> str:
    """Every setting: flag, environment variable, YAML key, meaning, default, reload."""
    rows = [
        "| flag | environment | YAML key | meaning | default | on reload |",
        "|---|---|---|---|---|---|",
    ]
    for name, option in declared(Settings).items():
        env = f"`{env_name(Settings, name)}`"
        env += " (comma-separated)" if option.repeatable else ""
        key = "" if option.reload is Reload.ENVIRONMENT else f"`{name}`"
        key += " (list)" if key and option.repeatable else ""
        cells = (_flag(option), env, key, option.meaning, option.default, option.reload.value)
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows)


def reload_table() -> str:
    """Each way a reload applies a setting, with the settings that declare it."""
    rows = ["| on reload | settings | what happens |", "|---|---|---|"]
    options = declared(Settings)
    for kind in Reload:
        names = ", ".join(f"`{name}`" for name, o in options.items() if o.reload is kind)
        rows.append(f"| {kind.value} | {names} | {_cell(kind.effect)} |")
    return "\n".join(rows)


REGIONS: dict[str, dict[str, Callable[[], str]]] = {
    "docs/configuration.md": {"settings": settings_table},
    "docs/behaviour.md": {"reload": reload_table},
}
"""Each file's generated regions, by name."""


def replace_region(text: str, name: str, body: str) -> str:
    """`text` with the region `name` holding `body`; ValueError if its markers are missing."""
    pattern = re.compile(rf"({re.escape(_begin(name))}\n).*?(^[ \t]*{re.escape(END)})", re.S | re.M)
    if pattern.search(text) is None:
        raise ValueError(f"no region {name!r}: mark it with {_begin(name)} and {END}")
    indent = re.search(rf"^([ \t]*){re.escape(_begin(name))}", text, re.M)
    pad = indent.group(1) if indent else ""
    shown = "\n".join(pad + line if line else line for line in body.splitlines())
    return pattern.sub(lambda m: f"{m.group(1)}{shown}\n{m.group(2)}", text, count=1)


def refreshed(root: Path) -> dict[Path, tuple[str, str]]:
    """Each file with generated regions: its text now and as it should be."""
    found = {}
    for relative, regions in REGIONS.items():
        path = root / relative
        text = new = path.read_text(encoding="utf-8")
        for name, render in regions.items():
            new = replace_region(new, name, render())
        found[path] = (text, new)
    return found


def main(argv: Sequence[str] = ()) -> int:
    """Rewrite the generated regions under the repository root (the working directory, or the
    first argument)."""
    root = Path(argv[0]) if argv else Path.cwd()
    for path, (text, new) in refreshed(root).items():
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"rewrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
