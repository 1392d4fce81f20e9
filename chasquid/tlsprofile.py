"""The TLS profile: Mozilla's "intermediate" configuration for listeners, and its client side.

Listeners offer TLS 1.2 and 1.3 only and, for TLS 1.2, only the ECDHE
suites with AEAD ciphers (AES-GCM, ChaCha20-Poly1305): no CBC, no RSA key
exchange, no SHA-1 MACs. The client picks among them (every one is strong),
as the profile allows. TLS 1.3's suites are OpenSSL's defaults, which are
exactly the profile's. The key-exchange groups are the profile's X25519,
P-256 and P-384: Python's ssl module cannot set a list of them, so they are
set through OpenSSL's own call on the context (``_set_groups``); where that
is not possible (not CPython, an ssl module built differently) OpenSSL's
default groups stay, all of them strong. Renegotiation is refused.

Outgoing STARTTLS is opportunistic: a failed handshake means the message goes
in plain text (when the domain's security level allows it), which is worse
than any TLS. So the client prefers the same suites, but still accepts the
ECDHE suites with AES-CBC and SHA-2 as a last resort for servers that have
nothing better; never TLS 1.0/1.1, RSA key exchange, 3DES, RC4 or SHA-1.
"""

from __future__ import annotations

import functools
import logging
import ssl
import sys
from collections.abc import Callable

log = logging.getLogger("chasquid.tlsprofile")

#: The TLS 1.2 suites of Mozilla's intermediate profile, in its order (OpenSSL names).
INTERMEDIATE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)

#: The key-exchange groups of the profile, in OpenSSL's list syntax.
GROUPS = "X25519:prime256v1:secp384r1"

#: What outgoing connections accept after those, for interoperability.
CLIENT_FALLBACK_CIPHERS = (
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-RSA-AES128-SHA256",
    "ECDHE-ECDSA-AES256-SHA384",
    "ECDHE-RSA-AES256-SHA384",
)


def server_context() -> ssl.SSLContext:
    """A server context with the intermediate profile; the caller loads a certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(":".join(INTERMEDIATE_CIPHERS))
    # The client chooses among suites that are all strong (Python sets the
    # server-preference flag by default).
    ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    # Session tickets off: a work-around for a Microsoft client bug.
    ctx.options |= ssl.OP_NO_TICKET
    ctx.verify_mode = ssl.CERT_NONE
    if not _set_groups(ctx, GROUPS):
        log.debug("cannot restrict TLS groups to %s; OpenSSL's defaults stay", GROUPS)
    return ctx


def client_context() -> ssl.SSLContext:
    """A verifying client context (system CAs, or ``SSL_CERT_FILE``) for outgoing STARTTLS."""
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(":".join(INTERMEDIATE_CIPHERS + CLIENT_FALLBACK_CIPHERS))
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    return ctx


# SSL_CTRL_SET_GROUPS_LIST of OpenSSL's ssl.h (SSL_CTX_set1_groups_list is a macro over it).
_SSL_CTRL_SET_GROUPS_LIST = 92

_Ctrl = Callable[[int, int, int, bytes], int]
_GetOptions = Callable[[int], int]


@functools.cache
def _openssl() -> tuple[_Ctrl, _GetOptions] | None:
    """SSL_CTX_ctrl and SSL_CTX_get_options of the libssl the ssl module uses, if reachable."""
    import _ssl
    import ctypes

    path = getattr(_ssl, "__file__", None)
    if sys.implementation.name != "cpython" or path is None:
        return None
    try:
        # The _ssl extension's handle finds the symbols of the libssl it links.
        lib = ctypes.PyDLL(path)
        ctrl = lib.SSL_CTX_ctrl
        get_options = lib.SSL_CTX_get_options
    except (OSError, AttributeError):
        return None
    ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
    ctrl.restype = ctypes.c_long
    get_options.argtypes = [ctypes.c_void_p]
    get_options.restype = ctypes.c_uint64
    return ctrl, get_options


def _set_groups(ctx: ssl.SSLContext, groups: str) -> bool:
    """Restrict the context's key-exchange groups; False when it cannot be done."""
    calls = _openssl()
    if calls is None:
        return False
    import ctypes

    ctrl, get_options = calls
    # CPython's SSLContext object holds its SSL_CTX pointer right after the
    # object header. It is used only once it proves to be that context: its
    # options must read back as the ones the ssl module reports.
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer or get_options(pointer) != ctx.options:
        return False
    return ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode("ascii")) == 1
