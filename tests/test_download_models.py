"""`python -m bot download-models`: local folders are left alone; an unreachable model is one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.cli import main


def test_local_folders_need_no_download(
    tiny_models: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("IMAGINE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("IMAGINE_SD_MODEL", str(tiny_models[0]))
    monkeypatch.setenv("IMAGINE_TEXT_MODEL", str(tiny_models[1]))
    assert main(["download-models"]) == 0
    out = capsys.readouterr().out
    assert out.count("local folder, nothing to download") == 2
    assert "HF_HUB_OFFLINE=1" in out


def test_unreachable_model_is_one_clear_error(
    tiny_models: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("IMAGINE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("IMAGINE_SD_MODEL", "no-such-org/no-such-model")
    monkeypatch.setenv("IMAGINE_TEXT_MODEL", str(tiny_models[1]))
    assert main(["download-models"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: could not download IMAGINE_SD_MODEL='no-such-org/no-such-model'")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
