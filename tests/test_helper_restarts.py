"""The copy counting of tests/helpers/restarts.py can fail: a duplicate, a loss, a stranger."""

from __future__ import annotations

from collections import Counter

import pytest
from helpers.restarts import duplicates, message_ids


def test_duplicates_are_reported() -> None:
    accepted = {0: "<0.1@load.test>", 1: "<1.2@load.test>"}
    delivered = Counter({"<0.1@load.test>": 2, "<1.1@load.test>": 1, "<1.2@load.test>": 1})
    assert duplicates(accepted, delivered) == ["<0.1@load.test>"]


def test_an_accepted_message_never_delivered_fails() -> None:
    with pytest.raises(AssertionError, match=r"never delivered: \[1\]"):
        duplicates({0: "<0.1@load.test>", 1: "<1.1@load.test>"}, Counter({"<0.1@load.test>": 1}))


def test_a_message_not_sent_by_the_load_fails() -> None:
    with pytest.raises(AssertionError, match="unexpected message"):
        duplicates({}, Counter({"<x@elsewhere>": 1}))


def test_message_ids_counts_copies() -> None:
    one = b"Received: x\r\nMessage-ID: <0.1@load.test>\r\n\r\nbody\r\n"
    assert message_ids([one, one]) == Counter({"<0.1@load.test>": 2})
