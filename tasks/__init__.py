"""Prefect tasks: single units of work, with retries where I/O can fail."""
