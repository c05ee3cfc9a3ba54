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


# -- scripts/setup.sh, test.sh and run.sh: which environment gets which extras ---------------------
# The scripts run for real in a copy of the project; the boundary they cross -- a virtual environment's
# python, pip, ruff and mypy, and the network fence -- is a stub that records each call.
_STUB = """#!/usr/bin/env bash
echo "$0 $*" >>"$CALLS"
"""


def _project_copy(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the scripts and pyproject.toml, with stub environments; returns (root, call log)."""
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    for name in ("setup.sh", "test.sh", "run.sh"):
        (root / "scripts" / name).write_bytes((ROOT / "scripts" / name).read_bytes())
        (root / "scripts" / name).chmod(0o755)
    (root / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    fence = root / "scripts" / "fence.sh"
    fence.write_text(_STUB + 'exec "$@"\n')
    fence.chmod(0o755)
    browser_deps = root / "scripts" / "browser-deps.sh"  # apt and npm: not this test's business
    browser_deps.write_text(_STUB)
    browser_deps.chmod(0o755)
    for venv in (".venv", ".venv-test"):
        (root / venv / "bin").mkdir(parents=True)
        for tool in ("python", "ruff", "mypy"):
            stub = root / venv / "bin" / tool
            stub.write_text(_STUB)
            stub.chmod(0o755)
    return root, tmp_path / "calls.log"


def _script(root: Path, calls: Path, name: str, **env: str) -> list[str]:
    """Run scripts/NAME; return the stub calls it made (paths relative to the copy)."""
    before = calls.read_text().splitlines() if calls.exists() else []
    result = subprocess.run(
        [str(root / "scripts" / name)],
        cwd=root,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "CALLS": str(calls), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    after = calls.read_text().splitlines() if calls.exists() else []
    return [line.replace(f"{root}/", "") for line in after[len(before) :]]


def _installs(calls: list[str]) -> list[str]:
    return [line for line in calls if " -m pip install -q -e " in line]


def test_the_tests_never_install_into_the_bots_environment(tmp_path: Path) -> None:
    """Before: test.sh put `safety` into .venv, and the bot run from there switched NudeNet on."""
    root, calls = _project_copy(tmp_path)
    test_calls = _script(root, calls, "test.sh")
    assert _installs(test_calls) == [".venv-test/bin/python -m pip install -q -e .[dev,safety,ray,train]"]
    assert not [line for line in test_calls if line.startswith(".venv/")], test_calls
    assert "scripts/fence.sh .venv-test/bin/python -m pytest" in test_calls
    run_calls = _script(root, calls, "run.sh")
    assert _installs(run_calls) == [".venv/bin/python -m pip install -q -e .[dev]"]
    assert run_calls[-1] == ".venv/bin/python -m bot run"
    (marker,) = (root / ".venv").glob(".installed-*")
    assert marker.read_text().split() == ["dev"]


def test_alternating_extra_sets_installs_each_once(tmp_path: Path) -> None:
    """Before: one marker per extra set, and each install removed the others: every switch reinstalled."""
    root, calls = _project_copy(tmp_path)
    assert len(_installs(_script(root, calls, "setup.sh"))) == 1  # dev
    assert len(_installs(_script(root, calls, "setup.sh", EXTRAS="dev,safety"))) == 1
    for extras in ("dev", "dev,safety", "safety,dev", "dev", "safety"):
        assert _installs(_script(root, calls, "setup.sh", EXTRAS=extras)) == [], extras
    assert len(_installs(_script(root, calls, "setup.sh", EXTRAS="dev,ray"))) == 1  # ray is new
    (marker,) = (root / ".venv").glob(".installed-*")
    assert marker.read_text().split() == ["dev", "ray", "safety"]
    # Another pyproject.toml: what was installed for the old one is not trusted.
    (root / "pyproject.toml").write_text((root / "pyproject.toml").read_text() + "\n# changed\n")
    assert len(_installs(_script(root, calls, "setup.sh"))) == 1
    (marker,) = (root / ".venv").glob(".installed-*")
    assert marker.read_text().split() == ["dev"]
