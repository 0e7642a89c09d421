"""Prefect flows: thin runbooks that only orchestrate tasks."""
