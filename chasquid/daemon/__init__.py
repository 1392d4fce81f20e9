"""The daemon: everything the ``chasquid`` process uses and no tool imports.

Its own modules are the wiring at the top: the command line (``cli``), start-up,
reload and shutdown (``app``), listeners, socket activation and the main log. Below
them its packages stack one way, each importing only those under it:
``monitoring`` > ``smtpsrv`` (reception) > ``queue`` > ``courier`` > ``telemetry``.
Everything else in ``chasquid/`` is the library the daemon shares with the tools.
"""
