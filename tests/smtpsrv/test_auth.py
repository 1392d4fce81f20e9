"""The Authenticator's order of questions: the domain's users file, then the fallback.

The fallback here is a stand-in recording what it is asked; the real one,
Dovecot, answers in tests/smtpsrv/test_dovecot_auth.py and tests/interop/.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from chasquid.confdir.userdb import UserDB
from chasquid.daemon.smtpsrv.auth import MIN_DURATION, AuthBackendError, Authenticator
from chasquid.errors import ChasquidError


class Fallback:
    """Says yes to one (identity, password), records every question, can fail or dawdle."""

    def __init__(
        self, identity: str = "", password: str = "", *, fail: bool = False, delay: float = 0
    ) -> None:
        self.good = (identity, password)
        self.fail = fail
        self.delay = delay
        self.asked: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def authenticate(self, user: str, password: str) -> bool:
        self.asked.append(user)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            if self.fail:
                raise ChasquidError("dial unix /run/dovecot/auth-client: connection refused")
            return (user, password) == self.good
        finally:
            self.in_flight -= 1


USERS = {"example.com": UserDB().with_user("alice", "local-pw")}


def check(auth: Authenticator, user: str, domain: str, password: str) -> bool:
    return asyncio.run(auth.authenticate(USERS, user, domain, password))


def test_the_users_file_answers_first() -> None:
    fallback = Fallback("alice@example.com", "dovecot-pw")
    auth = Authenticator(fallback=fallback)
    assert check(auth, "alice", "example.com", "local-pw")
    assert fallback.asked == []
    # A no from the file is not the last word: the fallback has its say.
    assert check(auth, "alice", "example.com", "dovecot-pw")
    assert not check(auth, "alice", "example.com", "wrong")
    assert fallback.asked == ["alice@example.com", "alice@example.com"]


def test_users_the_file_does_not_have() -> None:
    fallback = Fallback("bob@example.com", "pw")
    auth = Authenticator(fallback=fallback)
    assert check(auth, "bob", "example.com", "pw")
    assert not check(auth, "carol", "other.example", "pw")
    # No domain given: the bare name.
    assert not check(auth, "bob", "", "pw")
    assert fallback.asked == ["bob@example.com", "carol@other.example", "bob"]


def test_without_fallback_only_the_file() -> None:
    auth = Authenticator()
    assert check(auth, "alice", "example.com", "local-pw")
    assert not check(auth, "alice", "example.com", "other")
    assert not check(auth, "bob", "nowhere.example", "pw")


def test_a_failing_fallback_is_a_backend_error_only_when_asked() -> None:
    auth = Authenticator(fallback=Fallback(fail=True))
    # The file said yes: Dovecot being down does not matter.
    assert check(auth, "alice", "example.com", "local-pw")
    start = time.monotonic()
    with pytest.raises(AuthBackendError, match="connection refused"):
        check(auth, "alice", "example.com", "not the local one")
    # Failures are padded like everything else.
    assert time.monotonic() - start >= MIN_DURATION


def test_fallback_questions_are_bounded_in_number() -> None:
    # Longer than the local scrypt check in front of it, so the questions pile up.
    fallback = Fallback("x@example.com", "pw", delay=0.3)
    auth = Authenticator(fallback=fallback, max_fallback_concurrent=3)

    async def main() -> list[bool]:
        return await asyncio.gather(
            *(auth.authenticate(USERS, "x", "example.com", "pw") for _ in range(10))
        )

    assert asyncio.run(main()) == [True] * 10
    assert fallback.most_in_flight == 3
