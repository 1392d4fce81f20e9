"""The DKIM commands of chasquid-util: a domain's keys, their DNS record, test sign and verify.

Keys live in `domains/<domain>/dkim:<selector>.pem` (chasquid.confdir.dkimkeys
reads them, for the daemon too). Without a selector, commands use the
domain's first key file by name.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import enum
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from chasquid.confdir import dkimkeys
from chasquid.confdir.dkimkeys import DKIMKey, DKIMKeyError
from chasquid.errors import os_reason
from chasquid.fileio import create_new
from chasquid.normalize import NormalizationError, normalize_domain
from chasquid_util.errors import UtilError
from chasquid_util.users import check_domain, find_domain_dir, require_config_dir

if TYPE_CHECKING:
    from chasquid.mailauth.dkimverify import Verification

#: Key files hold a private key: readable by their owner only.
KEY_MODE = 0o600


class Algorithm(enum.StrEnum):
    """Key types `dkim-keygen --algo` makes; `rsa` is RSA-2048."""

    RSA = "rsa"
    RSA2048 = "rsa2048"
    RSA3072 = "rsa3072"
    RSA4096 = "rsa4096"
    ED25519 = "ed25519"

    @property
    def rsa_bits(self) -> int | None:
        """The modulus size of an RSA choice; None for Ed25519."""
        return {"rsa": 2048, "rsa2048": 2048, "rsa3072": 3072, "rsa4096": 4096}.get(self.value)


@dataclass(frozen=True)
class KeyRef:
    """A domain's key file: the normalized domain, its selector and the path."""

    domain: str
    selector: str
    path: Path


def key_ref(config_dir: Path, domain: str, selector: str | None, path: Path | None) -> KeyRef:
    """The key file named by the arguments: given, or the domain's first `dkim:*.pem` file."""
    if not domain:
        raise UtilError("Error: missing domain parameter")
    normalized = check_domain(domain)
    directory = find_domain_dir(require_config_dir(config_dir), domain)
    if selector is None:
        try:
            found = dkimkeys.key_files(directory)
        except OSError as e:
            raise UtilError(f"Error reading {directory}: {os_reason(e)}") from None
        if not found:
            pattern = directory / f"{dkimkeys.KEY_PREFIX}*{dkimkeys.KEY_SUFFIX}"
            raise UtilError(f'No DKIM keys found in "{pattern}"')
        selector, default_path = found[0]
    else:
        if not dkimkeys.valid_selector(selector):
            raise UtilError(
                f'Invalid selector "{selector}": letters, digits and hyphens, dot-separated'
            )
        default_path = dkimkeys.key_path(directory, selector)
    return KeyRef(normalized, selector, path or default_path)


def load(ref: KeyRef) -> DKIMKey:
    """The key of ref, or UtilError saying what is wrong with the file."""
    try:
        return dkimkeys.load_key(ref.path, ref.domain, ref.selector)
    except DKIMKeyError as e:
        raise UtilError(f"Error loading private key: {e}") from None


def default_selector(now: float | None = None) -> str:
    """Today's UTC date as `YYYYMMDD`: a new selector per rotation sorts after the old ones."""
    return time.strftime("%Y%m%d", time.gmtime(now))


def keygen(ref: KeyRef, algorithm: Algorithm) -> DKIMKey:
    """Generate a key and write it at ref.path (PKCS#8 PEM, mode 0600); never overwrites.

    The file gets the owner of its directory (the daemon's user, when run as root).
    """
    if os.path.lexists(ref.path):
        raise UtilError(f'Error: key already exists at "{ref.path}"')
    directory = ref.path.parent
    try:
        st = os.stat(directory)
    except OSError as e:
        raise UtilError(
            f'Error: directory "{directory}" cannot be used ({os_reason(e)}); '
            "the domain needs its directory under domains/"
        ) from None
    pem = _generate_pem(algorithm)
    try:
        create_new(ref.path, pem, mode=KEY_MODE, owner=(st.st_uid, st.st_gid))
    except FileExistsError:
        raise UtilError(f'Error: key already exists at "{ref.path}"') from None
    except OSError as e:
        raise UtilError(f'Error creating key file "{ref.path}": {os_reason(e)}') from None
    return load(ref)


def _generate_pem(algorithm: Algorithm) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    bits = algorithm.rsa_bits
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if bits is None:
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def to_lf(data: bytes) -> bytes:
    """A message read from a file or a pipe, with LF line ends (as the daemon stores it)."""
    return data.replace(b"\r\n", b"\n")


def from_domain(message: bytes) -> str:
    """The domain of the address in the message's From: field."""
    try:
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(message)
    except Exception as e:  # the parser's errors have no common base
        raise UtilError(f"Error parsing message: {e}") from None
    value = headers.get("From")
    if value is None:
        raise UtilError("Error parsing From: header: no From: header")
    addresses = email.utils.getaddresses([str(value)])
    address = addresses[0][1] if addresses else ""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise UtilError(f"Error parsing From: header: no address with a domain in {value!r}")
    try:
        return normalize_domain(domain)
    except NormalizationError as e:
        raise UtilError(f"Error parsing From: header: {e}") from None


def sign(message: bytes, key: DKIMKey, trace: Callable[[str], None]) -> bytes:
    """The `DKIM-Signature:` field for message (CRLF line ends), as a verifier expects it."""
    from chasquid.mailauth import dkimsign  # dkimpy and dnspython: only for these commands

    trace(f"Signing for {key.signing_domain} / {key.selector} with {key.algorithm.value}")
    try:
        (field,) = dkimsign.sign(to_lf(message), [key], linesep=b"\r\n")
    except dkimsign.SigningError as e:
        raise UtilError(f"Error signing message: {e}") from None
    return field


async def verify(message: bytes, txt: str | None) -> Verification:
    """Verify message's signatures; keys from DNS, or every look-up answered with txt."""
    from chasquid.mailauth import dkimverify

    lookup = dkimverify.fixed_lookup([txt.encode()]) if txt is not None else None
    result = await dkimverify.verify(to_lf(message), lookup=lookup)
    if result.error is not None:
        raise UtilError(f"Error verifying message: {result.error}")
    return result


def results_field(hostname: str, result: Verification) -> str:
    """`Authentication-Results:` for the results, CRLF line ends and TAB-indented continuations."""
    from chasquid.mailauth import authres

    value = authres.value(hostname, None, result.lines())
    assert value is not None  # lines() is never empty without an error
    return f"{authres.NAME}: " + value.replace("\n", "\r\n\t") + "\r\n"
