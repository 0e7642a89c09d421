"""Shared infrastructure every layer may use; it imports nothing of ours (docs/design.md, "Map")."""
