"""The test tree's own rule: pytest imports test files by basename (no __init__.py), so names must be unique."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def test_test_file_basenames_are_unique() -> None:
    tests = Path(__file__).resolve().parent
    names = Counter(path.name for path in tests.rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
