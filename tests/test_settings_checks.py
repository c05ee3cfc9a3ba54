"""Settings checked at start: defaults within their limits, no inf/negative counts, case-insensitive choices."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from bot.settings import SettingsError, load_settings
from tests.helpers import cli_env, run_cli


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No developer `.env` or IMAGINE_* variable leaks into these tests."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(("IMAGINE_", "DISCORD_", "RAY_")):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("IMAGINE_GUIDANCE", "25", "IMAGINE_GUIDANCE=25.0 exceeds IMAGINE_MAX_GUIDANCE=20.0"),
        ("IMAGINE_RAY_GPUS_PER_REPLICA", "-1", "IMAGINE_RAY_GPUS_PER_REPLICA"),
        ("IMAGINE_RAY_GPUS_PER_REPLICA", "inf", "IMAGINE_RAY_GPUS_PER_REPLICA"),
        ("IMAGINE_COOLDOWN_SECONDS", "inf", "IMAGINE_COOLDOWN_SECONDS"),
        ("IMAGINE_COOLDOWN_SECONDS", "nan", "IMAGINE_COOLDOWN_SECONDS"),
        ("IMAGINE_GUIDANCE", "nan", "IMAGINE_GUIDANCE"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert needle in str(caught.value)
    assert "\n" not in str(caught.value)


def test_gpus_per_replica_says_numbers_are_allowed_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGINE_RAY_GPUS_PER_REPLICA", "lots")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "IMAGINE_RAY_GPUS_PER_REPLICA" in message and "auto" in message and "number" in message, message


@pytest.mark.parametrize(("value", "expected"), [("auto", "auto"), ("0.5", 0.5), ("2", 2.0), ("0", 0.0)])
def test_gpus_per_replica_takes_auto_or_a_number(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: object
) -> None:
    monkeypatch.setenv("IMAGINE_RAY_GPUS_PER_REPLICA", value)
    assert load_settings().ray_gpus_per_replica == expected


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        ("IMAGINE_LOG_LEVEL", "debug", "log_level", "DEBUG"),
        ("IMAGINE_LOG_LEVEL", "Warning", "log_level", "WARNING"),
        ("IMAGINE_DEVICE", "CPU", "device", "cpu"),
        ("IMAGINE_DTYPE", "Float32", "dtype", "float32"),
        ("IMAGINE_BACKEND", "LOCAL", "backend", "local"),
        ("IMAGINE_COMPILE", "Off", "compile", "off"),
        ("IMAGINE_IMAGE_CLASSIFIER", "NudeNet", "image_classifier", "nudenet"),
    ],
)
def test_choices_are_case_insensitive(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, field: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    assert getattr(load_settings(), field) == expected


@pytest.mark.parametrize("command", [["history"], ["imagine", "a cat"], ["show", "x"], ["health"]])
def test_a_default_above_its_limit_stops_every_command_before_any_row(
    tmp_path: Path, command: list[str]
) -> None:
    data = tmp_path / "data"
    result = run_cli(command, cli_env(data, IMAGINE_GUIDANCE="25"), tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "error: invalid settings: IMAGINE_GUIDANCE=25.0 exceeds IMAGINE_MAX_GUIDANCE=20.0"
    ]
    db = data / "history.sqlite3"
    if db.exists():
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0
