"""Settings from the environment: every documented IMAGINE_BLOCKLIST form, one-line errors, defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.settings import DEFAULT_BLOCKLIST, Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No developer `.env` or IMAGINE_* variable leaks into these tests."""
    monkeypatch.chdir(tmp_path)
    for name in list(__import__("os").environ):
        if name.startswith(("IMAGINE_", "DISCORD_")):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    "raw",
    [
        '["\\\\bcastle\\\\b", "moat(s)?"]',  # JSON list
        "\\bcastle\\b\nmoat(s)?",  # newline-separated
        "\\bcastle\\b||moat(s)?",  # ||-separated
        "  \\bcastle\\b || moat(s)? \n",  # blanks around the separators
    ],
    ids=["json", "newlines", "double-bar", "spaced"],
)
def test_every_documented_blocklist_form_loads(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("IMAGINE_BLOCKLIST", raw)
    assert load_settings().blocklist == [r"\bcastle\b", "moat(s)?"]


def test_the_newline_form_works_from_a_dotenv_file(tmp_path: Path) -> None:
    # Single quotes: python-dotenv keeps backslashes as written (double quotes turn `\b` into a backspace).
    (tmp_path / ".env").write_text("IMAGINE_BLOCKLIST='\\bcastle\\b\nmoat(s)?'\n", encoding="utf-8")
    assert load_settings().blocklist == [r"\bcastle\b", "moat(s)?"]


def test_unset_blocklist_is_the_built_in_list() -> None:
    assert load_settings().blocklist == list(DEFAULT_BLOCKLIST)


@pytest.mark.parametrize("raw", ['["ok", "(unclosed"]', "ok||(unclosed", "ok\n(unclosed"])
def test_a_bad_regex_is_a_one_line_start_up_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("IMAGINE_BLOCKLIST", raw)
    with pytest.raises(SettingsError) as failed:
        load_settings()
    message = str(failed.value)
    assert message.startswith("invalid setting IMAGINE_BLOCKLIST:")
    assert "'(unclosed'" in message
    assert "\n" not in message


def test_broken_json_blocklist_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGINE_BLOCKLIST", '["unterminated')
    with pytest.raises(
        SettingsError, match=r"^invalid setting IMAGINE_BLOCKLIST: starts with '\[' but is not"
    ):
        load_settings()


def test_a_rule_across_settings_reads_as_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGINE_COUNT", "9")
    with pytest.raises(SettingsError) as failed:
        load_settings()
    assert str(failed.value) == "invalid settings: IMAGINE_COUNT=9 exceeds IMAGINE_MAX_COUNT=4"


def test_the_cooldown_is_off_by_default() -> None:
    assert Settings(_env_file=None).cooldown_seconds == 0.0  # type: ignore[call-arg]
