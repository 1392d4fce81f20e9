"""chasquid: an SMTP server for small mail servers, easy to configure and hard to misconfigure.

``chasquid.daemon`` is the daemon's alone; everything else in this package is the
library it shares with chasquid-util, smtp-check and mda-lmtp (docs/architecture.md).
"""

__version__ = "0.1.0"
