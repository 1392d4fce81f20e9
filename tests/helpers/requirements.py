"""The one place where a test may be skipped: a system facility it needs is missing.

Under CHASQUID_REQUIRE_ALL=1 (what .ci/run sets) a missing facility fails the test
instead, so CI never skips anything.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    """Skip the calling test for reason, or fail it when CHASQUID_REQUIRE_ALL=1."""
    if os.environ.get("CHASQUID_REQUIRE_ALL") == "1":
        pytest.fail(f"{reason}; required because CHASQUID_REQUIRE_ALL=1")
    # pytest.skip() raises this exception; raising it here keeps every skip behind
    # the check above.
    raise pytest.skip.Exception(reason)
