"""What the environment can break gives one `error:` line and a prompt non-zero exit, never a traceback
or a hang: a damaged database, a bad data folder, no GPU, no network (subprocesses under a timeout)."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import cli_env, run_cli

# A hang is the defect under test: fail it well before the suite's own timeout.
PROMPT_EXIT_S = 90


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    no_models = {
        "IMAGINE_SD_MODEL": str(data_dir / "no-sd-model"),
        "IMAGINE_TEXT_MODEL": str(data_dir / "no-text-model"),
    }
    return cli_env(data_dir, **(no_models | extra))


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return run_cli(args, env, cwd, timeout=PROMPT_EXIT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`{' '.join(args)}` did not exit within {PROMPT_EXIT_S}s: {exc.stderr!r}")


def _unreachable_discord_env(data_dir: Path, **extra: str) -> tuple[dict[str, str], int]:
    """`_env` with Discord at a port nobody listens on (connection refused, like no network), and that port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = _env(
        data_dir,
        DISCORD_TOKEN="not-a-real-token",
        DISCORD_API_BASE=f"http://127.0.0.1:{port}/api/v10",
        DISCORD_GATEWAY_URL=f"ws://127.0.0.1:{port}/",
        **extra,
    )
    return env, port


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    assert result.returncode not in (0, None), output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


def _run_all(
    cases: list[tuple[list[str], dict[str, str]]], cwd: Path
) -> list[subprocess.CompletedProcess[str]]:
    # Independent processes: side by side (each pays the torch import).
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        return list(pool.map(lambda case: _cli(case[0], case[1], cwd), cases))


def test_every_command_on_a_database_of_random_bytes_exits_with_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db_path = data / "history.sqlite3"
    db_path.write_bytes(os.urandom(64 * 1024))
    env = _env(data)
    commands = [["history"], ["show", "abc"], ["imagine", "a lighthouse", "--steps", "2"], ["run"]]
    env_run = {**env, "DISCORD_TOKEN": "not-a-real-token"}
    results = _run_all([(cmd, env_run if cmd == ["run"] else env) for cmd in commands], tmp_path)
    for command, result in zip(commands, results, strict=True):
        line = _one_error_line(result)
        assert str(db_path) in line, (command, line)
        assert "backup" in line, (command, line)
        assert result.returncode == 1, (command, result.returncode)


def test_a_data_dir_that_is_a_file_exits_with_one_line(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("not a folder")
    line = _one_error_line(_cli(["history"], _env(not_a_folder), tmp_path))
    assert str(not_a_folder) in line
    assert "IMAGINE_DATA_DIR" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_data_dir_exits_with_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    sqlite3.connect(data / "history.sqlite3").close()
    data.chmod(0o500)
    try:
        line = _one_error_line(_cli(["history"], _env(data), tmp_path))
    finally:
        data.chmod(0o700)
    assert str(data) in line


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_a_folder_nobody_can_write_exits_with_one_line(tmp_path: Path) -> None:
    # /proc refuses new files even to root: the unwritable-folder case wherever the tests run.
    line = _one_error_line(_cli(["history"], _env(Path("/proc")), tmp_path))
    assert "/proc/history.sqlite3" in line
    assert "IMAGINE_DATA_DIR" in line


def test_cuda_without_a_gpu_exits_with_one_line_and_writes_no_row(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    data = tmp_path / "data"
    line = _one_error_line(_cli(["imagine", "a lighthouse"], _env(data, IMAGINE_DEVICE="cuda"), tmp_path))
    assert "IMAGINE_DEVICE=cuda" in line
    with sqlite3.connect(data / "history.sqlite3") as conn:
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone() == (0,)


def test_run_and_sync_without_network_exit_with_one_line(tmp_path: Path) -> None:
    env, port = _unreachable_discord_env(tmp_path / "data")
    for result in _run_all([(["run"], env), (["sync"], env)], tmp_path):
        line = _one_error_line(result)
        assert "cannot reach Discord" in line
        assert f"127.0.0.1:{port}" in line


def test_mps_on_a_machine_without_it_exits_with_one_line_and_writes_no_row(
    tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    import torch

    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    data = tmp_path / "data"
    sd, text = (str(path) for path in tiny_models)
    env = _env(data, IMAGINE_DEVICE="mps", IMAGINE_SD_MODEL=sd, IMAGINE_TEXT_MODEL=text, IMAGINE_WIDTH="64")
    line = _one_error_line(_cli(["imagine", "a lighthouse", "--height", "64", "--steps", "1"], env, tmp_path))
    assert "IMAGINE_DEVICE=mps" in line
    with sqlite3.connect(data / "history.sqlite3") as conn:
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone() == (0,)


def test_tiny_models_to_a_file_or_an_unwritable_path_exits_with_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder", encoding="utf-8")
    env = _env(tmp_path / "data")
    cases = [(["tiny-models", str(a_file)], env), (["tiny-models", "/proc/tiny-models"], env)]
    file_result, proc_result = _run_all(cases, tmp_path)
    assert str(a_file) in _one_error_line(file_result)
    assert "/proc/tiny-models" in _one_error_line(proc_result)
    assert a_file.read_text(encoding="utf-8") == "not a folder"


def test_a_missing_local_model_folder_is_named_as_a_folder_not_a_hub_id(tmp_path: Path) -> None:
    env = _env(tmp_path / "data", IMAGINE_SD_MODEL="./models/sd", IMAGINE_DEVICE="cpu")
    line = _one_error_line(_cli(["imagine", "a lighthouse"], env, tmp_path))
    assert "IMAGINE_SD_MODEL='./models/sd'" in line and "no such folder" in line, line
    assert "Repo id" not in line and "repo id" not in line, line


def test_generated_images_that_is_a_file_exits_with_one_line_and_writes_no_row(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "generated_images").write_text("", encoding="utf-8")
    env = _env(data, IMAGINE_DEVICE="cpu")
    line = _one_error_line(_cli(["imagine", "a lighthouse"], env, tmp_path))
    assert str(data / "generated_images") in line and "IMAGINE_DATA_DIR" in line, line
    db = data / "history.sqlite3"
    if db.exists():
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone() == (0,)


def test_run_and_sync_print_only_their_error_line_at_warning_level(tmp_path: Path) -> None:
    env, _ = _unreachable_discord_env(tmp_path / "data", IMAGINE_LOG_LEVEL="WARNING")
    for result in _run_all([(["run"], env), (["sync"], env)], tmp_path):
        # Not beside it: discord.py's "PyNaCl is not installed, voice will NOT be supported" (no voice here).
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: cannot reach Discord"), result.stderr
