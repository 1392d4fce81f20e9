"""chasquid: an SMTP server for small mail servers, easy to configure and hard to misconfigure."""

__version__ = "0.1.0"
