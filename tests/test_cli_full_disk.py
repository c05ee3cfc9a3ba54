"""A full disk, made for real: the data folder (or only its images folder) on a tiny tmpfs in a private mount
namespace. The CLI says the disk is full, in one line, and leaves no half-written job behind."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import tiny_cli_env

PROMPT_EXIT_S = 120
JOB = ["imagine", "a lighthouse at night", "--no-expand", "--count", "2", "--steps", "1", "--seed", "3"]

# Runs as `sh -c SCRIPT sh MOUNT FREE_KB PYTHON ARGS…` inside `unshare -m`: mount a 1 MiB tmpfs on MOUNT,
# let the CLI create its database when MOUNT is the data folder, fill the disk, free FREE_KB, run the CLI.
_SCRIPT = """
set -e
mount_point=$1 free_kb=$2 python=$3
shift 3
mount -t tmpfs -o size=1m tmpfs "$mount_point"
"$python" -m bot history > /dev/null 2>&1
dd if=/dev/zero of="$mount_point/filler" bs=4k > /dev/null 2>&1 || true
truncate -s "-${free_kb}k" "$mount_point/filler"
set +e
"$python" -m bot "$@"
code=$?
rm -f "$mount_point/filler"
cp -r "$mount_point/." "$mount_point.after" 2>/dev/null
exit $code
"""


def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _can_mount(), reason="needs `unshare -m` and tmpfs mounts (root)")


def _on_a_full_disk(
    mount_point: Path, free_kb: int, args: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    mount_point.mkdir(parents=True, exist_ok=True)
    command = [
        "unshare",
        "-m",
        "sh",
        "-c",
        _SCRIPT,
        "sh",
        str(mount_point),
        str(free_kb),
        sys.executable,
        *args,
    ]
    # Its own process group: a hung CLI (the defect) is killed with its shell, not left behind.
    process = subprocess.Popen(
        command,
        env=env,
        cwd=mount_point.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=PROMPT_EXIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"the CLI hung on a full disk: {stderr!r}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


@pytest.mark.parametrize("free_kb", [8, 32, 64])
def test_a_full_disk_under_the_database_says_the_disk_is_full(
    tiny_models: tuple[Path, Path], tmp_path: Path, free_kb: int
) -> None:
    # 8 KB: opening fails; 32 KB: opened, the job's row cannot be written; 64 KB: the images cannot.
    data = tmp_path / "data"
    result = _on_a_full_disk(data, free_kb, JOB, tiny_cli_env(tiny_models, data))
    line = _one_error_line(result)
    assert "is full" in line and "free some space" in line, line
    assert "damaged" not in line and "backup" not in line, line
    # Nothing half-written: no job folder with no images in it.
    images = tmp_path / "data.after" / "generated_images"
    assert not images.exists() or not any(images.iterdir()), list(images.iterdir())


def test_a_full_images_disk_fails_the_job_in_one_line_and_keeps_no_folder(
    tiny_models: tuple[Path, Path], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    images = data / "generated_images"
    result = _on_a_full_disk(images, 4, JOB, tiny_cli_env(tiny_models, data))
    line = _one_error_line(result)
    assert "could not be saved" in line and "disk is full" in line, line
    with sqlite3.connect(data / "history.sqlite3") as conn:
        [(status, reason)] = conn.execute("SELECT status, reason FROM jobs").fetchall()
    assert status == "failed" and "disk is full" in reason, reason
    after = tmp_path / "data" / "generated_images.after"
    assert not any(after.iterdir()), list(after.iterdir())
    assert os.listdir(images) == []  # the mount is gone with its namespace: the folder under it is empty
