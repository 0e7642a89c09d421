"""Stage: what may be deleted, and deleting it (`prune`; docs/operations.md, "Retention")."""
