"""What each setting declares on its own field: its flag, help, group and how a reload applies it.

The CLI's parser and `--help`, the reload (`daemon.lifecycle`), the refusal of environment-only
keys in a config file and the tables of docs/configuration.md and docs/behaviour.md are all
derived from these declarations, so a new setting is described once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pydantic import BaseModel


class Reload(enum.Enum):
    """How a reload (SIGHUP) applies a setting."""

    IN_PLACE = "on SIGHUP, in place"
    NEW_POLLER = "on SIGHUP, with a new poller"
    RESTART = "only at restart"
    ENVIRONMENT = "never: flag or environment only"

    @property
    def short(self) -> str:
        """The few words `--help` shows."""
        return _SHORT[self]

    @property
    def effect(self) -> str:
        """What a reload does to a setting of this kind (docs/behaviour.md)."""
        return _EFFECT[self]


_SHORT = {
    Reload.IN_PLACE: "reloads in place",
    Reload.NEW_POLLER: "reloads with a new poller",
    Reload.RESTART: "restart to change",
    Reload.ENVIRONMENT: "not in the config file",
}
_EFFECT = {
    Reload.IN_PLACE: "applied at once; polling goes on undisturbed (`stale_after` applies to the "
    "next failed fetch)",
    Reload.NEW_POLLER: "a new scheduler and HTTP session take over and start a round at once; "
    "requests in flight are dropped; a pause after a 429 is kept; images that stay keep their "
    "series without a gap",
    Reload.RESTART: "a changed value is logged as a `warning` (`configuration needs a restart "
    "to apply`) and ignored",
    Reload.ENVIRONMENT: "refused in the config file; flags and environment do not change while "
    "the process runs",
}


@dataclass(frozen=True, slots=True)
class Option:
    """A setting's declaration, put on its field as `Annotated[type, Option(...)]`.

    `help` is the plain line of `--help`; `doc`, when given, the longer Markdown of the docs'
    table. `old_flags` are deprecated spellings that still work, with one warning at start.
    """

    reload: Reload
    help: str
    default: str = ""
    flag: str | None = None
    old_flags: tuple[str, ...] = ()
    group: str = ""
    metavar: str | None = None
    repeatable: bool = False
    switch: bool = False
    switch_value: bool = True  # what a switch stores: False for a `--no-...` flag
    doc: str | None = None

    @property
    def meaning(self) -> str:
        return self.doc if self.doc is not None else self.help


def declared(model: type[BaseModel]) -> dict[str, Option]:
    """Each field's `Option`, in field order; a field that declares none raises TypeError."""
    found: dict[str, Option] = {}
    for name, field in model.model_fields.items():
        options = [m for m in field.metadata if isinstance(m, Option)]
        if len(options) != 1:
            raise TypeError(f"setting {name!r} declares {len(options)} Option(...), not one")
        found[name] = options[0]
    return found


def named(model: type[BaseModel], reload: Reload) -> tuple[str, ...]:
    """The settings of `model` that a reload applies as `reload` says."""
    return tuple(name for name, option in declared(model).items() if option.reload is reload)


def env_name(model: type[BaseModel], name: str) -> str:
    """The environment variable of a setting: its alias, else the model's prefix and its name."""
    alias = model.model_fields[name].validation_alias
    if isinstance(alias, str):
        return alias
    return f"{model.model_config.get('env_prefix', '')}{name}".upper()
