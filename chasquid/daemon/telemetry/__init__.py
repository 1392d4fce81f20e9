"""What the daemon records about its work: the mail log and the counters.

Reception, the queue and the couriers write here; the daemon exposes it.
The tools never import it. It imports only chasquid's basic modules.
"""
