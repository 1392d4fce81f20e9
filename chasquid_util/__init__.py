"""chasquid_util."""
