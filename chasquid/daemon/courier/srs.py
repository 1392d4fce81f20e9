"""Send-only sender rewriting for forwarded mail."""

from __future__ import annotations

import contextlib

from chasquid.normalize import NormalizationError, domain_to_ascii, split_addr


def forward_sender(original_sender: str, original_address: str) -> str:
    """The rewritten sender `<user>+fwd_from=<sender with @ as =>@<ascii domain>`.

    original_address is the recipient as it was before alias resolution; its
    domain is written in ASCII (IDNA) form so the address is valid on any
    server. A domain that has no ASCII form is kept as it is.
    """
    user, domain = split_addr(original_address)
    with contextlib.suppress(NormalizationError):
        domain = domain_to_ascii(domain) if domain else domain
    return f"{user}+fwd_from={original_sender.replace('@', '=')}@{domain}"
