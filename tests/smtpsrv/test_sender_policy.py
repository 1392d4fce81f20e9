"""auth_sender_policy: which MAIL FROM an authenticated user may use (any, domain, own)."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from helpers.rawclient import RawClient
from helpers.reception import HOSTNAME, PASSWORD, Running

MakeServer = Callable[..., Running]

ALIASES = """postmaster: user
info: user, someone@elsewhere.example
sales: other@elsewhere.example
"""

CASES = {
    # sender: allowed under (any, domain, own)
    "<user@example.com>": (True, True, True),
    "<>": (True, True, True),
    "<user+tag@example.com>": (True, True, True),
    "<u.ser@example.com>": (True, True, True),
    "<USER@Example.COM>": (True, True, True),
    "<postmaster@example.com>": (True, True, True),  # an alias of the user
    "<info@example.com>": (True, True, True),  # an alias with the user among others
    "<contact@xn--bcher-kva.example>": (True, False, True),  # another domain's alias
    "<sales@example.com>": (True, True, False),  # an alias, not the user's
    "<recv@example.com>": (True, True, False),  # another user
    "<nobody@example.com>": (True, True, False),
    "<user@xn--bcher-kva.example>": (True, False, False),
    "<ceo@bank.test>": (True, False, False),
    "<user@example.com.bank.test>": (True, False, False),
}


def _session(srv: Running) -> RawClient:
    c = RawClient(srv.port)
    assert c.reply().startswith("220 ")
    assert c.cmd("STARTTLS").startswith("220")
    c.wrap(srv.client_tls(), HOSTNAME)
    assert c.cmd("EHLO laptop").startswith("250")
    response = base64.b64encode(f"\0user@example.com\0{PASSWORD}".encode()).decode()
    assert c.cmd(f"AUTH PLAIN {response}").startswith("235")
    return c


@pytest.mark.parametrize("policy", ["any", "domain", "own", None])
def test_sender_policy(make_server: MakeServer, policy: str | None) -> None:
    srv = make_server(
        conf=f"auth_sender_policy: {policy}\n" if policy else "",
        aliases={"example.com": ALIASES, "xn--bcher-kva.example": "contact: user@example.com\n"},
    )
    column = ("any", "domain", "own").index(policy or "domain")  # domain is the default
    c = _session(srv)
    for sender, allowed in CASES.items():
        reply = c.cmd(f"MAIL FROM:{sender}")
        if allowed[column]:
            assert reply.startswith("250 2.1.5"), (sender, reply)
            assert c.cmd("RSET").startswith("250")
        else:
            assert reply == "553 5.7.1 user@example.com may not send as this address", sender
            # The session ends after three errors: a fresh one for the next sender.
            c.close()
            c = _session(srv)
    c.close()
    log = srv.maillog_text()
    refused = [s for s, allowed in CASES.items() if not allowed[column]]
    for sender in refused:
        address = sender.strip("<>").lower().replace("xn--bcher-kva", "bücher")
        assert (
            f"rejected from={address} - user@example.com may not send as this address "
            f"({policy or 'domain'} policy)"
        ) in log.lower(), sender


def test_unauthenticated_senders_are_not_concerned(make_server: MakeServer) -> None:
    srv = make_server(conf="auth_sender_policy: own\n")
    c = RawClient(srv.port)
    c.reply()
    assert c.cmd("EHLO mx.bank.test").startswith("250")
    assert c.cmd("MAIL FROM:<ceo@bank.test>").startswith("250")
    c.close()


def test_unknown_policy_is_a_config_error(make_server: MakeServer) -> None:
    from chasquid.confdir.config import ConfigError

    with pytest.raises(ConfigError, match="auth_sender_policy: must be one of any, domain, own"):
        make_server(conf="auth_sender_policy: mine\n")
