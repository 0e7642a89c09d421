"""Writing benchmark results into docs/benchmarks.md, one section per benchmark."""

from __future__ import annotations

import argparse
import platform
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\nWritten by the benchmarks in `bench/` (`make bench`); every ratio is "
    "against a baseline measured in the same run on the same data.\n"
)


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def update_section(name: str, markdown: str, doc: Path = DOC) -> None:
    """Replace (or append) the section between `<!-- name -->` markers."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    footer = f"_Measured {stamp} on {machine()}._"
    body = f"<!-- {name} -->\n{markdown.rstrip()}\n\n{footer}\n<!-- /{name} -->"
    text = doc.read_text(encoding="utf-8") if doc.exists() else HEADER
    pattern = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _m: body, text) if pattern.search(text) else f"{text}\n{body}\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text, encoding="utf-8")


def table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def bench_arguments(doc: str | None) -> argparse.Namespace:
    """Every benchmark's command line: `--quick` (a smoke run on small data, never
    written to docs/) and `--no-write` (a full run printed only)."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/")
    return parser.parse_args()


def publish(name: str, markdown: str, args: argparse.Namespace) -> None:
    """Print the results; a full run also replaces its section of docs/benchmarks.md."""
    print(markdown)
    if not args.quick and not args.no_write:
        update_section(name, markdown)
