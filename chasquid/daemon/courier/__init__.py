"""Delivery of one message to one recipient: local MDA, pipe aliases, LMTP, remote SMTP."""

from __future__ import annotations

from chasquid.daemon.courier.base import Courier, DeliveryError

__all__ = ["Courier", "DeliveryError"]
