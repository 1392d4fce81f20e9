"""Running external programs: hooks, MDAs and pipe aliases, without a shell, bounded in time.

Shared: the alias resolver of chasquid.confdir runs the alias-resolve hook
through it, so it imports only chasquid's basic modules.
"""
