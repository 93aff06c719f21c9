"""`Authorization: Basic` against bcrypt hashes, as exporter-toolkit checks it, and under a flood.

A bcrypt check costs ~50 ms of CPU by design. The answers are remembered so that only a password
never seen before costs one: a verified one until the users change, a refused one for
`FAILURE_MEMORY` seconds (a scraper left with an old password, or a flood repeating one, costs
nothing). A new guess always costs a full check, and at most `MAX_CHECKS` distinct checks wait:
past that the answer is "busy" (429), which says nothing of the password, so a flood can neither
guess faster than bcrypt runs nor queue work without end.
"""

from __future__ import annotations

import asyncio
import binascii
import enum
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Final

import bcrypt

MAX_CHECKS: Final = 8
"""Distinct bcrypt checks running or waiting; ~0.4 s of work at cost 10."""
FAILURE_MEMORY: Final = 60.0
"""Seconds a refused user and password are answered without bcrypt."""
MAX_FAILURES: Final = 1024
"""Refusals remembered at once; the oldest is forgotten first."""
BCRYPT_BYTES: Final = 72
"""bcrypt reads this much of a password; Go's CompareHashAndPassword ignores the rest."""


class Verdict(enum.Enum):
    ALLOWED = "allowed"
    REFUSED = "refused"
    BUSY = "busy"  # too many checks waiting: no verdict on the password


class BasicAuth:
    """One reading of `basic_auth_users`; bcrypt runs in a thread, one check at a time.

    What is remembered is a keyed digest of user, stored hash and password (the key lives only in
    this object), never the password. An unknown user is checked against a real hash, so timing
    does not tell users apart.
    """

    def __init__(
        self, users: Mapping[str, str], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._users = {name.encode(): hashed.encode() for name, hashed in users.items()}
        self._decoy = next(iter(self._users.values()), b"")
        self._key = secrets.token_bytes(32)
        self._clock = clock
        self._verified: dict[bytes, bytes] = {}  # user -> digest of the last password verified
        self._failed: dict[bytes, float] = {}  # digest -> when it was refused, oldest first
        self._checks: dict[bytes, asyncio.Future[bool]] = {}  # digest -> its running check
        self._bcrypt = asyncio.Lock()

    async def check(self, authorization: str | None) -> Verdict:
        credentials = _basic_credentials(authorization)
        if credentials is None:
            return Verdict.REFUSED
        user, password = credentials
        stored = self._users.get(user)
        digest = hmac.digest(
            self._key,
            b":".join(part.hex().encode() for part in (user, stored or b"", password)),
            hashlib.sha256,
        )
        remembered = self._verified.get(user)
        if stored is not None and remembered and hmac.compare_digest(remembered, digest):
            return Verdict.ALLOWED
        if self._refused_lately(digest):
            return Verdict.REFUSED
        running = self._checks.get(digest)  # the same credentials at once share one check
        if running is None:
            if self.checks_waiting >= MAX_CHECKS:
                return Verdict.BUSY
            running = asyncio.ensure_future(self._run_bcrypt(password, stored or self._decoy))
            self._checks[digest] = running
            running.add_done_callback(partial(self._settle, user, digest, stored is not None))
        # Shielded: a client that hangs up does not cancel the check the others wait on.
        ok = await asyncio.shield(running)
        return Verdict.ALLOWED if ok and stored is not None else Verdict.REFUSED

    @property
    def checks_waiting(self) -> int:
        """Distinct checks running or waiting; at `MAX_CHECKS`, new ones are turned away."""
        return len(self._checks)

    async def _run_bcrypt(self, password: bytes, hashed: bytes) -> bool:
        async with self._bcrypt:
            return await asyncio.to_thread(_bcrypt_matches, password, hashed)

    def _settle(self, user: bytes, digest: bytes, known: bool, done: asyncio.Future[bool]) -> None:
        del self._checks[digest]
        if done.cancelled() or done.exception() is not None:
            return
        if done.result() and known:
            self._verified[user] = digest
            return
        self._failed[digest] = self._clock()
        while len(self._failed) > MAX_FAILURES:
            del self._failed[next(iter(self._failed))]

    def _refused_lately(self, digest: bytes) -> bool:
        horizon = self._clock() - FAILURE_MEMORY
        while self._failed and next(iter(self._failed.values())) < horizon:
            del self._failed[next(iter(self._failed))]
        return digest in self._failed


def _bcrypt_matches(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password[:BCRYPT_BYTES], hashed)
    except ValueError:  # a hash the library cannot read (a salt outside its alphabet) never matches
        return False


def _basic_credentials(authorization: str | None) -> tuple[bytes, bytes] | None:
    """User and password as sent (bytes: bcrypt compares bytes), or None if not Basic."""
    if not authorization:
        return None
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = binascii.a2b_base64(encoded.strip().encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    user, colon, password = decoded.partition(b":")
    return (user, password) if colon else None
