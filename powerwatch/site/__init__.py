"""The site as an operator runs it: the Prefect server, worker and deployments as child
processes (`stack`), job plumbing (`jobs`), status, alert automations, table output.
"""
