"""Sender rewriting for forwarded mail."""

from __future__ import annotations

from chasquid.daemon.courier.srs import forward_sender


def test_rewrites_sender_into_the_original_address() -> None:
    assert forward_sender("from@rana", "remote@loco") == "remote+fwd_from=from=rana@loco"


def test_chained_forwards_nest() -> None:
    first = forward_sender("user222@dodo", "chain-1-3@kiwi")
    assert first == "chain-1-3+fwd_from=user222=dodo@kiwi"
    assert forward_sender(first.replace("@kiwi", "@dodo"), "chain-1-4@dodo") == (
        "chain-1-4+fwd_from=chain-1-3+fwd_from=user222=dodo=dodo@dodo"
    )


def test_domain_is_written_in_ascii() -> None:
    assert forward_sender("a@b.org", "josé@ñaca.com") == "josé+fwd_from=a=b.org@xn--aca-6ma.com"


def test_every_at_is_replaced() -> None:
    assert forward_sender('"x@y"@z.org', "u@d.org") == 'u+fwd_from="x=y"=z.org@d.org'
