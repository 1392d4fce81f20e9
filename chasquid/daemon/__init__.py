"""The chasquid process: command line, start-up wiring, listeners, signals, reload, main log.

The top of the stack: it builds reception, the queue and the couriers and
runs them; nothing else imports it.
"""
