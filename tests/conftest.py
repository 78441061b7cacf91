"""Shared pytest options and fixtures.

`pytest --update-golden` rewrites the golden files under tests/golden/ instead of comparing.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).parent / "golden"


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite tests/golden/* files instead of comparing against them")


@pytest.fixture
def golden(request):
    """golden(name, text): compare text with tests/golden/<name> (or rewrite it)."""
    update = request.config.getoption("--update-golden")

    def check(name: str, text: str) -> None:
        path = GOLDEN_DIR / name
        if update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return
        if not path.exists():
            pytest.fail(f"golden file {path} does not exist; create it with "
                        "`pytest --update-golden`")
        want = path.read_text()
        if text != want:
            diff = "".join(difflib.unified_diff(
                want.splitlines(keepends=True), text.splitlines(keepends=True),
                fromfile=f"golden/{name}", tofile="actual", n=2))
            if len(diff) > 20000:
                diff = diff[:20000] + "\n... (diff truncated)\n"
            pytest.fail(f"{name} differs from the golden file (if the change is intended, "
                        f"rerun with `pytest --update-golden`):\n{diff}", pytrace=False)

    return check
