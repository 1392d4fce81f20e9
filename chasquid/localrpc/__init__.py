"""The local RPC between the tools and the running daemon, over a unix socket in the data dir.

Shared by both ends: the daemon serves it, chasquid-util calls it. It imports
only chasquid's basic modules; the daemon plugs its handlers in.
"""
