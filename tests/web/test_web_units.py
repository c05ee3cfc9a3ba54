"""The gallery's pure parts: `next=` checking, the search syntax."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.settings import SettingsError
from bot.web.auth import safe_next
from bot.web.search import SearchSyntaxError, parse_search


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("/job/abc?x=1", "/job/abc?x=1"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("/\tevil", "/"),
        ("", "/"),
    ],
)
def test_safe_next(given: str, expected: str) -> None:
    assert safe_next(given) == expected


def test_search_syntax() -> None:
    query = parse_search(
        'castle aspect:16:9 liked before:2026-12-01 -night "red roof" action:upscale status:done'
    )
    assert query.words == ("castle", "red roof")
    assert query.excluded == ("night",)
    assert query.aspect == (16, 9) and query.liked and query.action == "upscale" and query.status == "done"
    assert query.before == datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    assert parse_search("aspect:portrait server:42").aspect == (2, 3)
    assert parse_search("server:42").server == 42
    # FTS5 operators typed by a member are quoted terms, not syntax.
    assert parse_search('castle OR "x" NEAR(a b)').match_expression(("NEAR(a",)) == '"NEAR(a"'


@pytest.mark.parametrize(
    "bad", ["aspect:wide", "before:tomorrow", "action:dance", "status:lost", "server:me"]
)
def test_search_syntax_errors(bad: str) -> None:
    with pytest.raises(SearchSyntaxError):
        parse_search(bad)


def test_web_settings_from_env_and_files(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from bot.settings import load_settings

    secret = tmp_path / "secret"
    secret.write_text("s3cret-from-a-file\n")
    monkeypatch.setenv("IMAGINE_WEB_CLIENT_SECRET_FILE", str(secret))
    monkeypatch.setenv("IMAGINE_WEB_CLIENT_ID", "123")
    monkeypatch.setenv("IMAGINE_WEB_ADMINS", "11, 22 33")
    monkeypatch.setenv("IMAGINE_WEB_URL", "https://gallery.example/")
    settings = load_settings(_env_file=None)
    assert settings.web_client_secret is not None
    assert settings.web_client_secret.get_secret_value() == "s3cret-from-a-file"
    assert settings.web_admins == [11, 22, 33]
    assert settings.web_url == "https://gallery.example"
    assert (settings.web_bind, settings.web_metrics_bind) == ("127.0.0.1:8080", "127.0.0.1:9464")
    monkeypatch.setenv("IMAGINE_WEB_CLIENT_SECRET", "both")
    with pytest.raises(SettingsError, match="IMAGINE_WEB_CLIENT_SECRET or IMAGINE_WEB_CLIENT_SECRET_FILE"):
        load_settings(_env_file=None)
    monkeypatch.delenv("IMAGINE_WEB_CLIENT_SECRET")
    monkeypatch.setenv("IMAGINE_WEB_BIND", "8080")
    with pytest.raises(SettingsError, match="IMAGINE_WEB_BIND"):
        load_settings(_env_file=None)


def test_bot_web_without_secrets_is_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGINE_")}
    env["IMAGINE_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "bot", "web"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: `bot web` needs IMAGINE_WEB_CLIENT_ID (or IMAGINE_WEB_CLIENT_ID_FILE): README → Web gallery says where to get it"
    ]


def test_web_package_imports_only_store_policy_forgetting_settings() -> None:
    """The web layer sits beside the chat layer: no cogs, no bot client, no delivery (LAYOUT.md)."""
    import ast
    from pathlib import Path

    allowed = {"bot.store", "bot.policy", "bot.forgetting", "bot.settings"}
    for path in (Path(__file__).resolve().parents[2] / "bot" / "web").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith(("bot.", "cogs", "discord")) and not name.startswith("bot.web"):
                    assert name in allowed, f"{path.name} imports {name}"
