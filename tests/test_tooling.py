"""Project tooling: the Python floor, pytest's import path, the type checker's strictness, marker help."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_python_floor_is_3_11_everywhere() -> None:
    """`asyncio.TimeoutError` is the builtin `TimeoutError` only from 3.11 on, and the code relies on it."""
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py311"
    assert PYPROJECT["tool"]["mypy"]["python_version"] == "3.11"
    setup = (ROOT / "scripts" / "setup.sh").read_text(encoding="utf-8")
    assert "sys.version_info >= (3, 11)" in setup
    assert "Python 3.11" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "3.10" not in setup
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    image = re.search(r"ARG PYTHON_IMAGE=python:3\.(\d+)", dockerfile)
    assert image is not None and int(image.group(1)) >= 11


def test_mypy_checks_untyped_defs() -> None:
    assert PYPROJECT["tool"]["mypy"]["check_untyped_defs"] is True


def test_bare_pytest_from_the_repo_root_collects_cross_imports() -> None:
    """tests/cogs/conftest.py imports `tests.fakediscord`: bare `pytest` must find the `tests` package."""
    pytest_script = Path(sys.executable).parent / "pytest"
    for command in ([str(pytest_script)], [sys.executable, "-m", "pytest"]):
        result = subprocess.run(
            [*command, "--collect-only", "-q", "-p", "no:cacheprovider", "tests/cogs/test_commands.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert "ModuleNotFoundError" not in result.stdout


def test_heavy_marker_help_names_a_command_that_exists() -> None:
    (heavy,) = [m for m in PYPROJECT["tool"]["pytest"]["ini_options"]["markers"] if m.startswith("heavy:")]
    assert "make " not in heavy
    assert "scripts/test.sh -m heavy" in heavy
    assert (ROOT / "scripts" / "test.sh").exists()
    assert '"$@"' in (ROOT / "scripts" / "test.sh").read_text(encoding="utf-8")
