"""Reception tests run a real server in-process; the fixtures live in tests/helpers/reception.py."""

from helpers.reception import ca, conn, make_server, no_real_dns, srv

__all__ = ["ca", "conn", "make_server", "no_real_dns", "srv"]
