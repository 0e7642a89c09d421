"""Stage: verified snapshots of the database (`snapshots`) and restore = snapshot + replay of the
chunks loaded since (`replay`).
"""
