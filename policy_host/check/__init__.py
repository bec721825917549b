"""Checking customers: the DNS client and wire reading, the checks,
reason codes and the parallel runner."""
