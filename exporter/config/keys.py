"""The API key: read once at startup with a size cap, then followed on disk when it is rotated.

Kubernetes updates a mounted secret in place by swapping a `..data` symlink, so a key file that is
a regular file is checked every few seconds (one stat, off the event loop) and read again when it
changed. A key that is not a regular file (a FIFO, `<(echo ...)`) can be read only once: it is
not followed. A rotated key is taught to the log redactor before any request carries it.
"""

from __future__ import annotations

import asyncio
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog
from pydantic import SecretStr

from exporter.logs import redact

log = structlog.get_logger(__name__)

MAX_KEY_BYTES: Final = 8192
"""A key file larger than this is refused: `/dev/zero` must not eat the memory."""

CHECK_EVERY: Final = 5.0
"""Seconds between two checks of a key file for a rotated key."""

_NOTHING: Final = object()


def clean_key(key: str) -> str:
    """Strip what secret files and `--from-file` secrets add; refuse what no header can carry."""
    key = key.strip()
    if not key:
        raise ValueError("the API key is empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise ValueError("the API key contains control characters")
    return key


@dataclass(frozen=True, slots=True)
class FileVersion:
    """What tells one content of a file from the next without reading it."""

    resolved: str  # the target of the symlinks: Kubernetes swaps `..data`
    device: int
    inode: int
    size: int
    mtime_ns: int


def _version(resolved: str, status: os.stat_result) -> FileVersion:
    return FileVersion(resolved, status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def file_version(path: Path) -> FileVersion | None:
    """The version of the regular file at `path` now; None if missing or not a regular file."""
    try:
        status = path.stat()
        resolved = os.path.realpath(path)
    except OSError:
        return None
    return _version(resolved, status) if stat.S_ISREG(status.st_mode) else None


def read_key_file(path: Path) -> tuple[SecretStr, FileVersion | None]:
    """The cleaned key, and the version read when `path` is a regular file (else None).

    Raises ValueError saying what is wrong, never quoting the file's content.
    """
    try:
        resolved = os.path.realpath(path)
        with path.open("rb") as file:
            status = os.fstat(file.fileno())
            data = file.read(MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_BYTES:
        raise ValueError(f"larger than {MAX_KEY_BYTES} bytes, which no API key is")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    version = _version(resolved, status) if stat.S_ISREG(status.st_mode) else None
    return SecretStr(clean_key(text)), version


class KeySource:
    """The key requests carry now. This one never changes: a key from the environment."""

    def __init__(self, key: SecretStr) -> None:
        self._key = key

    @property
    def current(self) -> SecretStr:
        return self._key

    def __repr__(self) -> str:
        return f"{type(self).__name__}(**********)"


class KeyFile(KeySource):
    """A key read from a regular file, read again when the file changes on disk."""

    def __init__(
        self, path: Path, key: SecretStr, version: FileVersion, *, every: float = CHECK_EVERY
    ) -> None:
        super().__init__(key)
        self.path = path
        self.every = every
        self._version: FileVersion | None = version
        self._refused: object = _NOTHING  # the last version found unusable: told once

    @classmethod
    def open(cls, path: Path, *, every: float = CHECK_EVERY) -> KeySource:
        """The key of `path`: followed if it is a regular file, fixed otherwise."""
        key, version = read_key_file(path)
        return KeySource(key) if version is None else cls(path, key, version, every=every)

    async def watch(self) -> None:
        """Check the file every `every` seconds, until cancelled."""
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.check()
            except Exception:  # a bug costs one check, never the rotations to come
                log.exception("API key check failed", file=str(self.path))

    async def check(self) -> bool:
        """Take the file's key if the file changed and holds a usable one; True if the key changed.

        An unusable file (missing, empty, too big) keeps the current key, with one warning per
        version of the file.
        """
        seen = await asyncio.to_thread(file_version, self.path)
        if seen == self._version:
            return False
        try:
            if seen is None:  # reading what is no regular file could block for ever
                raise ValueError("missing, or not a regular file")
            key, version = await asyncio.to_thread(read_key_file, self.path)
        except ValueError as exc:
            if seen != self._refused:
                self._refused = seen
                log.warning(
                    "API key file unusable, keeping the current key",
                    file=str(self.path),
                    problem=str(exc),
                )
            return False
        self._version, self._refused = version, _NOTHING
        if key.get_secret_value() == self._key.get_secret_value():
            return False
        redact(key.get_secret_value())  # before anything could log it
        self._key = key
        log.info("API key changed", file=str(self.path))
        return True
