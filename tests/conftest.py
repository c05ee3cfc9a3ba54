"""Shared fixtures: tiny real models (built once per session), settings for them, one loaded engine.

Async fixtures run on the session loop (`asyncio_default_fixture_loop_scope = "session"`); tests that
await session-loop objects (the engine, a store opened by a fixture) mark themselves
`@pytest.mark.asyncio(loop_scope="session")` so fixture and test share one loop.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import pytest_asyncio

# The shared test helpers assert too: pytest rewrites their asserts so a failure shows its values.
pytest.register_assert_rewrite("tests.helpers")

from bot.settings import Settings  # noqa: E402  (after the assert-rewrite registration)
from tests.raycluster import ray_cluster  # noqa: F401, E402  (one Ray cluster per module, `ray` tests only)

if TYPE_CHECKING:  # the engine imports torch: keep it out of test runs that never touch a model
    from bot.engine.executor import Engine

# Set at import, before any test module imports huggingface_hub: no test may reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

TINY_SIZE = 64
TINY_STEPS = 2
TINY_COUNT = 4

SettingsFactory = Callable[..., Settings]
T = TypeVar("T")


def tiny_job(kind: Callable[..., T], **overrides: Any) -> T:
    """A job the tiny settings render, as `kind` (GenerationRequest, JobSpec); keywords override fields."""
    values: dict[str, Any] = {
        "seed_text": "Northeastern University",
        "count": TINY_COUNT,
        "steps": TINY_STEPS,
        "guidance": 7.5,
        "width": TINY_SIZE,
        "height": TINY_SIZE,
        "job_seed": 7,
    }
    return kind(**(values | overrides))


def tiny_settings(data_dir: Path, models: tuple[Path, Path], **overrides: Any) -> Settings:
    """Settings for the tiny models on the CPU; never reads a developer's `.env`."""
    sd_path, text_path = models
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "sd_model": str(sd_path),
        "text_model": str(text_path),
        "width": TINY_SIZE,
        "height": TINY_SIZE,
        "steps": TINY_STEPS,
        "count": TINY_COUNT,
        "device": "cpu",
        "dtype": "float32",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


# -- tiny models and the engine -------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sd_path, text_path): tiny random-weight SD2 and GPT-2 folders, built once per session.

    With IMAGINE_TEST_MODELS_CACHE=DIR, a build is kept in DIR under a key of the builder's source and
    the library versions, and later sessions (one test file at a time) reuse it.
    """
    from bot.engine.tiny_models import build_tiny_models

    cache = os.environ.get("IMAGINE_TEST_MODELS_CACHE")
    if not cache:
        return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))
    return _cached_tiny_models(Path(cache), build_tiny_models, tmp_path_factory)


def _cached_tiny_models(
    cache: Path, build: Callable[[Path], tuple[Path, Path]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    import hashlib
    import importlib.metadata
    import shutil

    import bot.engine.tiny_models

    key = hashlib.sha256(Path(bot.engine.tiny_models.__file__).read_bytes())
    for library in ("torch", "diffusers", "transformers", "tokenizers", "safetensors"):
        key.update(f"{library}={importlib.metadata.version(library)}".encode())
    target = cache / key.hexdigest()[:16]
    if not (target / "text" / "config.json").is_file():
        built = tmp_path_factory.mktemp("tiny-models")
        build(built)
        cache.mkdir(parents=True, exist_ok=True)
        staged = Path(shutil.copytree(built, cache / f".{target.name}-{os.getpid()}"))
        try:
            staged.rename(target)  # atomic: a concurrent session sees a whole build or none
        except OSError:  # another session published the same build first
            shutil.rmtree(staged)
    return target / "sd", target / "text"


@pytest.fixture
def make_settings(tmp_path: Path, tiny_models: tuple[Path, Path]) -> SettingsFactory:
    """A factory of tiny-model settings with `data_dir=tmp_path`; keyword arguments override fields."""

    def factory(**overrides: Any) -> Settings:
        return tiny_settings(tmp_path, tiny_models, **overrides)

    return factory


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    """Default tiny-model settings for one test (a fresh data folder)."""
    return make_settings()


@pytest.fixture(scope="session")
def engine_settings(tmp_path_factory: pytest.TempPathFactory, tiny_models: tuple[Path, Path]) -> Settings:
    """The settings the session engine is built from."""
    return tiny_settings(tmp_path_factory.mktemp("engine-data"), tiny_models)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def engine(engine_settings: Settings) -> AsyncIterator[Engine]:
    """One Engine on the tiny models, loaded once, closed at the end of the session."""
    from bot.engine.executor import Engine
    from bot.wiring import engine_config_from

    loaded = Engine(engine_config_from(engine_settings))
    await loaded.load()
    yield loaded
    await loaded.close()
