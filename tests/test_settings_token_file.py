"""DISCORD_TOKEN_FILE: the bot token read from a file (a Docker/compose secret), never echoed back."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.settings import SettingsError, load_settings
from tests.helpers import cli_env, run_cli

SECRET = "file-token-7c1e9a44d2b85f3061ae"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DISCORD_TOKEN", "DISCORD_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)


def token_file(tmp_path: Path, text: str, name: str = "discord_token") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_token_read_from_file_and_kept_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Editors and `echo` leave a trailing newline; it is not part of the token.
    monkeypatch.setenv("DISCORD_TOKEN_FILE", str(token_file(tmp_path, SECRET + "\n")))
    settings = load_settings(_env_file=None)
    assert settings.discord_token is not None
    assert settings.discord_token.get_secret_value() == SECRET
    shown = [repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())]
    assert not [text for text in shown if SECRET in text]


def test_token_file_empty_value_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN_FILE", "")
    settings = load_settings(_env_file=None)
    assert settings.discord_token is None and settings.discord_token_file is None


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "invalid setting DISCORD_TOKEN: cannot read DISCORD_TOKEN_FILE={path}: No such file"),
        ("directory", "invalid setting DISCORD_TOKEN: cannot read DISCORD_TOKEN_FILE={path}: Is a directory"),
        ("blank", "invalid setting DISCORD_TOKEN: DISCORD_TOKEN_FILE={path} is empty"),
        ("both", "invalid setting DISCORD_TOKEN: set DISCORD_TOKEN or DISCORD_TOKEN_FILE, not both"),
    ],
)
def test_token_file_errors_name_the_variable_not_the_token(
    case: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = {
        "missing": tmp_path / "nope",
        "directory": tmp_path,
        "blank": token_file(tmp_path, " \n", name="blank"),
        "both": token_file(tmp_path, SECRET),
    }[case]
    monkeypatch.setenv("DISCORD_TOKEN_FILE", str(path))
    if case == "both":
        monkeypatch.setenv("DISCORD_TOKEN", SECRET)
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None)
    assert str(caught.value).startswith(expected.format(path=path))
    assert SECRET not in str(caught.value)


def test_cli_with_an_unreadable_token_file_prints_one_error_line(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "data", DISCORD_TOKEN_FILE=str(tmp_path / "missing"))
    result = run_cli(["health"], env, tmp_path, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: invalid setting DISCORD_TOKEN: cannot read DISCORD_TOKEN_FILE={tmp_path / 'missing'}: "
        "No such file or directory"
    ]
