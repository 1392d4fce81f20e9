"""Reception tests run a real server in-process; the fixtures live in tests/helpers/reception.py."""

from helpers.reception import ca, make_server, no_real_dns

__all__ = ["ca", "make_server", "no_real_dns"]
