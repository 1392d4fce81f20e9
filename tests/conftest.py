"""Shared pytest configuration; shared helpers live in tests/helpers/ (import as ``helpers.x``)."""
