"""The monitoring HTTP server: pages for people, metrics and traces for tools.

It runs in the daemon's event loop and reads the daemon's state through
``sources.Sources``; it never changes it, except ``POST /exit``.
"""
