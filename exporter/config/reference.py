"""The manual's tables that restate the settings, generated from what each field declares.

`docs/generate.py` writes them into the marked regions of docs/configuration.md and
docs/behaviour.md; a test fails while a committed file differs from what it would write.
"""

from __future__ import annotations

from exporter.config.options import Option, Reload, declared, env_name
from exporter.config.settings import Settings


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
