"""The command line, derived from what each setting declares (`Option`): the Prometheus
exporter-toolkit and promslog names, grouped, each with its environment variable and how a reload
applies it, and the old spellings, which still work and are reported once at start."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence
from typing import Any

from exporter.config.options import Option, declared, env_name
from exporter.config.settings import CONFIG_ENV, Settings

_WIDTH = 100
OLD_FLAGS = "old_flags"
"""The namespace's record of the deprecated spellings used: old flag to its new name."""


class _SettingAction(argparse.Action):
    """Stores a setting's flag as its declaration says (a value, a list, a switch), and notes
    an old spelling when one is used."""

    def __init__(self, option_strings: Sequence[str], dest: str, option: Option, **kw: Any):
        super().__init__(option_strings, dest, nargs=0 if option.switch else None, **kw)
        self.option = option

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        value = self.option.switch_value if self.option.switch else values
        if self.option.repeatable:
            value = [*(getattr(namespace, self.dest) or []), value]
        setattr(namespace, self.dest, value)
        if option_string in self.option.old_flags:
            getattr(namespace, OLD_FLAGS)[option_string] = self.option.flag


def _help(name: str, option: Option) -> str:
    default = f" (default: {option.default.replace('`', '')})" if option.default else ""
    if option.default == "required":
        default = " (required)"
    where = f"env {env_name(Settings, name)}; {option.reload.short}"
    return f"{option.help}{default} [{where}]".replace("`", "").replace("%", "%%")


def build_parser(prog: str) -> tuple[argparse.ArgumentParser, dict[str, Any]]:
    """The parser of every setting that has a flag, and its groups by title (to add to)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Prometheus exporter for Gcore Cloud GPU images (virtual and bare metal).\n"
        "Every flag can also come from its environment variable or, unless marked otherwise,\n"
        f"from the YAML file of --config ({CONFIG_ENV}), under the name of the variable\n"
        "without GCORE_EXPORTER_, in lower case. Flags win over the environment, which wins\n"
        "over the file. SIGHUP reloads the configuration; each flag says how it applies.",
        epilog=_epilog(),
    )
    groups: dict[str, Any] = {}
    for name, option in declared(Settings).items():
        if option.flag is None:
            continue
        if option.group not in groups:
            groups[option.group] = parser.add_argument_group(option.group)
        group = groups[option.group]
        kind: dict[str, Any] = {"dest": name, "action": _SettingAction, "option": option}
        if not option.switch:
            kind["metavar"] = option.metavar or name.upper()
        group.add_argument(option.flag, help=_help(name, option), **kind)
        for old in option.old_flags:
            group.add_argument(old, help=argparse.SUPPRESS, **kind)
    groups["General"].add_argument("-h", "--help", action="help", help="show this help and exit")
    return parser, groups


def _epilog() -> str:
    options = declared(Settings)
    env_only = [
        textwrap.fill(
            option.help.replace("`", ""),
            width=_WIDTH,
            initial_indent=f"  {env_name(Settings, name):<24} ",
            subsequent_indent=" " * 27,
        )
        for name, option in options.items()
        if option.flag is None
    ]
    old = [
        f"  {flag} is now {option.flag}"
        for option in options.values()
        if option.flag is not None
        for flag in option.old_flags
    ]
    return "\n".join(
        [
            "Environment only (never in the config file, never reloaded):",
            *env_only,
            "",
            "Deprecated spellings, which still work with one warning at start:",
            *old,
        ]
    )


def parse(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The flags given (None where unset) and the deprecated spellings among them."""
    namespace = parser.parse_args(argv, argparse.Namespace(**{OLD_FLAGS: {}}))
    flags = vars(namespace)
    return flags, flags.pop(OLD_FLAGS)
