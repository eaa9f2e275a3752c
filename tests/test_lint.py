"""The whole tree (package, tests, benchmarks, notebooks) is ruff-clean under pyproject's [tool.ruff]."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    if importlib.util.find_spec("ruff") is None:
        pytest.fail(f"ruff is not installed in {sys.executable}: pip install -e '.[dev]' (ruff is a dev extra)")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"ruff check found problems:\n{result.stdout}{result.stderr}"
