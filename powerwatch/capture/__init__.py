"""Live capture (spec/station-protocol.md -> spec/landing-chunks.md).

- `frames`: judging a batch of received frames (plain polars, no I/O);
- `connections`: one asyncio task per station, the flat receive buffer;
- `runner`: a run: flushes into landing chunks and the dead-letter file, signals.
"""
