"""Queue item identifiers: 8 random bytes as unpadded URL-safe base64."""

from __future__ import annotations

import base64
import os


def new_id() -> str:
    """Return a fresh 11-character id from ``[A-Za-z0-9_-]`` that does not start with ``-``.

    An id starting with ``-`` would read as an option on a command line
    (``chasquid-util queue show -x...``), so such draws are discarded. Also used
    for DSN Message-IDs and MIME boundaries.
    """
    while True:
        item_id = base64.urlsafe_b64encode(os.urandom(8)).rstrip(b"=").decode("ascii")
        if not item_id.startswith("-"):
            return item_id
