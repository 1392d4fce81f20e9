"""Existing chasquid.conf files load unchanged.

tests/testdata/chasquid-1.11-debian.conf is the example file shipped by Debian's chasquid
1.11 package (/etc/chasquid/chasquid.conf), copied verbatim (chasquid is Apache-2.0
licensed) so that this test checks compatibility with a real file, not our idea of one.
"""

from __future__ import annotations

import re
from pathlib import Path

from helpers.confdirs import write_conf

from chasquid.confdir import config

DEBIAN_EXAMPLE = Path(__file__).parent.parent / "testdata" / "chasquid-1.11-debian.conf"


def test_debian_example_as_shipped_gives_defaults(tmp_path: Path) -> None:
    loaded = config.load(write_conf(tmp_path, DEBIAN_EXAMPLE.read_text()))
    empty = config.load(write_conf(tmp_path, ""))
    assert loaded == empty
    assert loaded.mail_delivery_agent_args == ("-f", "%from%", "-d", "%to_user%")


def test_debian_example_with_every_key_uncommented(tmp_path: Path) -> None:
    # Uncommenting every "#key: value" line gives a file that repeats smtp_address,
    # submission_address and mail_delivery_agent_args, as real installations do.
    text = re.sub(r"(?m)^#([a-z_]+:)", r"\1", DEBIAN_EXAMPLE.read_text())
    loaded = config.load(write_conf(tmp_path, text))
    assert loaded.hostname == "mx.example.com"
    assert loaded.smtp_address == ("systemd", ":25")
    assert loaded.submission_address == ("systemd", ":587")
    assert loaded.monitoring_address == "127.0.0.1:1099"
    assert loaded.mail_delivery_agent_args == ("-f", "%from%", "-d", "%to_user%")
    assert loaded.data_dir == "/var/lib/chasquid"
    assert loaded.dovecot_auth is False
    assert loaded.haproxy_incoming is False
