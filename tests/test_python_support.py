"""pyproject says Python >= 3.10: no module may use syntax or standard-library names that arrived in 3.11."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Standard-library names new in 3.11 that a module could reach for.
NEWER = re.compile(r"\bimport tomllib\b|\bExceptionGroup\b|\bStrEnum\b|\bTaskGroup\b|asyncio\.timeout\b|"
                   r"from typing import [^\n]*\b(Self|Never|LiteralString|NotRequired|Required|assert_never)\b|"
                   r"typing\.(Self|Never|LiteralString|NotRequired)\b|datetime\.UTC\b|contextlib\.chdir\b|"
                   r"hashlib\.file_digest\b|sys\.exception\(")


def test_the_package_parses_as_python_3_10_and_uses_no_3_11_library_names():
    files = sorted((ROOT / "huabu").rglob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
    assert len(files) > 50
    for path in files:
        text = path.read_text(encoding="utf-8")
        ast.parse(text, filename=str(path), feature_version=(3, 10))
        found = NEWER.search(text)
        assert found is None, f"{path.relative_to(ROOT)} uses {found.group(0)!r} (Python 3.11+)"
