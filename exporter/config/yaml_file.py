"""Reading an operator's YAML file without trusting it: the main config and the web config both.

A file is the operator's, but `/dev/zero`, a deep nesting, an alias bomb or a 100 kB value must
cost one clear line, never a MemoryError, a RecursionError traceback, a hang or a flooded log.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any, Final

import yaml

MAX_CONFIG_BYTES: Final = 1 << 20
"""A config file larger than this is refused (`--config /dev/zero` must not eat the memory)."""
MAX_CONFIG_VALUES: Final = 100_000
"""Most values a config file may hold once YAML aliases are expanded (a "billion laughs")."""
MAX_CONFIG_DEPTH: Final = 64
"""Deepest nesting of lists and mappings; far beyond any real config, far below Python's stack."""
MAX_SHOWN: Final = 100
"""Most characters of a value (or a key) quoted in an error line."""


class ConfigError(Exception):
    """Invalid configuration; `problems` holds one human-readable line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def read_yaml(path: Path, where: str) -> Any:
    """The document in `path`, within the limits above; ConfigError (one line) otherwise.

    `where` starts each line, naming the file. PyYAML's snippet of the line is never shown: it
    could quote a secret.
    """
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{where}: larger than {MAX_CONFIG_BYTES} bytes"])
    try:
        return _parse(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([f"{where}: not UTF-8 text"]) from None
    except _TooDeep:
        raise ConfigError([f"{where}: nested more than {MAX_CONFIG_DEPTH} levels deep"]) from None
    except _TooBig:
        raise ConfigError(
            [f"{where}: more than {MAX_CONFIG_VALUES} values once YAML aliases are expanded"]
        ) from None
    except yaml.YAMLError as exc:
        problem = cut(str(getattr(exc, "problem", None) or "cannot be parsed"))
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{where} is not valid YAML: {problem}{at}"]) from None
    except ValueError as exc:  # a scalar PyYAML cannot build: a 5,000-digit integer, 2024-13-01
        raise ConfigError([f"{where} holds a value that cannot be read: {cut(str(exc))}"]) from None


class _TooBig(Exception):
    """The document stands for more than `MAX_CONFIG_VALUES` values."""


class _TooDeep(Exception):
    """The document nests deeper than `MAX_CONFIG_DEPTH`."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing to nest deeper than `MAX_CONFIG_DEPTH`.

    Composing recurses once per level: 20,000 levels would end in a RecursionError.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_CONFIG_DEPTH:
                raise _TooDeep
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _parse(text: str) -> Any:
    """`yaml.safe_load`, refusing documents nested too deeply or expanding to too many values.

    Aliases share one object, so loading is cheap; but whatever walks the result (validation,
    an error message) pays for every expanded value: 358 bytes can stand for a billion of them.
    """
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, MAX_CONFIG_VALUES) > MAX_CONFIG_VALUES:
            raise _TooBig
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_size(root: yaml.Node, budget: int) -> int:
    """Nodes under `root` with every alias expanded, counted up to `budget` + 1 (then it stops).

    Each distinct node is counted once and remembered, so the work is the size of the document.
    """
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        sizes[id(node)] = budget + 1  # a node that contains itself expands without end
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        total = 1
        for child in children:
            total += size(child)
            if total > budget:
                break
        sizes[id(node)] = min(total, budget + 1)
        return sizes[id(node)]

    return size(root)


# An error line shows a bounded rendering of the bad value: a few items, levels and characters.
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel = 2
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = _SHOWN.maxfrozenset = 4
_SHOWN.maxstring = _SHOWN.maxother = 60


def cut(text: str) -> str:
    """`text`, cut to `MAX_SHOWN` characters."""
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def shown(value: Any) -> str:
    """`repr(value)`, bounded in size and in the work it costs whatever the value."""
    return cut(_SHOWN.repr(value))
