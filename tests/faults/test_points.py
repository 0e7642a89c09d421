"""Every declared fault point is passed by the code and documented with its recovery."""

from __future__ import annotations

import re
from pathlib import Path

from powerwatch.core.faults import POINTS

ROOT = Path(__file__).resolve().parents[2]
CALL = re.compile(r"""fault_point\(\s*["']([a-z_]+\.[a-z_]+)["']\s*\)""")


def _called() -> set[str]:
    found: set[str] = set()
    for folder in ("powerwatch", "db", "flows", "tasks"):
        for path in (ROOT / folder).rglob("*.py"):
            found |= set(CALL.findall(path.read_text(encoding="utf-8")))
    return found


def test_every_declared_point_is_passed_by_the_code_and_every_call_is_declared() -> None:
    called = _called()
    assert set(POINTS) - called == set(), "declared but never passed"
    assert called - set(POINTS) == set(), "passed but not declared"


def test_every_point_is_in_the_design_documents_fault_tables() -> None:
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    section = design[design.index("## Fault points and recovery") :]
    assert [p for p in POINTS if f"`{p}`" not in section] == []
