"""Building the engine and runner from settings, in one place for the CLI and the bot."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from bot.engine.backend import RenderBackend
from bot.engine.safety import ClassifierUnavailable, TileClassifier, load_classifier
from bot.engine.validation import Limits
from bot.jobs import JobRunner
from bot.settings import Settings, SettingsError
from bot.store import HistoryStore

if TYPE_CHECKING:  # torch comes with the engine: imported only where a backend is built
    from bot.engine.executor import EngineConfig


class _RedactSecrets(logging.Filter):
    """Belt and braces: no log record may carry the bot token, whatever a library logs."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._pattern = re.compile("|".join(re.escape(s) for s in secrets if s)) if any(secrets) else None

    def filter(self, record: logging.LogRecord) -> bool:
        if self._pattern is not None:
            message = record.getMessage()
            if self._pattern.search(message):
                record.msg = self._pattern.sub("[redacted]", message)
                record.args = None
        return True


def configure_logging(settings: Settings) -> None:
    """Plain timestamped logs on stderr, with the token redacted."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    token = settings.discord_token.get_secret_value() if settings.discord_token else ""
    workers = settings.workers_token.get_secret_value() if settings.workers_token else ""
    handler.addFilter(_RedactSecrets([token, workers]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    for noisy in ("discord.http", "discord.gateway", "httpx", "urllib3", "filelock", "PIL"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLevelName(settings.log_level)))
    logging.getLogger("discord.client").addFilter(_not_about_voice)


def _not_about_voice(record: logging.LogRecord) -> bool:
    """Drop discord.py's "PyNaCl/davey is not installed, voice will NOT be supported": the bot has no voice."""
    return "voice will NOT be supported" not in record.getMessage()


def limits_from(settings: Settings) -> Limits:
    """The hard limits the engine enforces."""
    return Limits(
        max_steps=settings.max_steps,
        max_pixels=settings.max_pixels,
        max_count=settings.max_count,
        max_guidance=settings.max_guidance,
        max_prompt_chars=settings.max_prompt_chars,
        max_output_pixels=settings.max_output_pixels,
    )


def engine_config_from(settings: Settings) -> EngineConfig:
    """Everything the engine needs, copied out of the settings."""
    from bot.engine.executor import EngineConfig
    from bot.engine.expander import SamplingSettings
    from bot.models.registry import blend_model, load_registry

    registry = load_registry(settings)
    blend = blend_model(settings, registry)  # issue 22: /blend's unCLIP model, None = off
    return EngineConfig(
        sd_model=settings.sd_model,
        text_model=settings.text_model,
        device=settings.device,
        dtype=settings.dtype,
        low_vram=settings.low_vram,
        compile=settings.compile,
        safety_checker=settings.safety_checker,
        safety_checker_model=settings.safety_checker_model,
        preview_every=settings.preview_every,
        limits=limits_from(settings),
        blocklist=tuple(settings.blocklist),
        sampling=SamplingSettings(
            max_new_tokens=settings.expand_max_new_tokens,
            temperature=settings.expand_temperature,
            top_k=settings.expand_top_k,
            repetition_penalty=settings.expand_repetition_penalty,
        ),
        warmup_size=(settings.width, settings.height),
        inpaint_model=settings.inpaint_model,
        # Several models (README → Models, LoRAs and Draft): the registry, the residency bound, the LoRAs.
        models=tuple(e for e in registry.entries if not e.is_blend_kind) if registry.path is not None else (),
        default_model=registry.default,
        max_resident_models=settings.max_resident_models,
        lora_dir=str(settings.loras_path),
        caption_model=settings.caption_model,
        describe_clip_model=settings.describe_clip_model,
        blend_model=blend[0].source if blend is not None else None,
        blend_model_setting=blend[1] if blend is not None else "IMAGINE_BLEND_MODEL",
    )


def build_backend(settings: Settings) -> RenderBackend:
    """The render backend IMAGINE_BACKEND names: the local GPU thread, or Ray Serve workers."""
    if settings.backend == "ray":
        # Ray Serve workers over HTTP: this process imports no Ray (bot/engine/workers/).
        from bot.engine.workers.http_backend import HttpBackend

        if settings.workers_url is None:
            raise SettingsError(
                "IMAGINE_BACKEND=ray needs IMAGINE_WORKERS_URL, the URL `python -m bot workers` prints "
                "(e.g. http://ray-head:8000)"
            )
        if settings.workers_token is None:
            raise SettingsError(
                "IMAGINE_BACKEND=ray needs IMAGINE_WORKERS_TOKEN or IMAGINE_WORKERS_TOKEN_FILE "
                "(the same token as on the Ray nodes)"
            )
        return HttpBackend(
            settings.workers_url,
            settings.workers_token.get_secret_value(),
            limits=limits_from(settings),
            blocklist=tuple(settings.blocklist),
        )
    from bot.engine.executor import Engine
    from bot.engine.local_backend import LocalBackend

    return LocalBackend(Engine(engine_config_from(settings)))


def build_runner(
    settings: Settings,
    store: HistoryStore,
    backend: RenderBackend,
    *,
    requeue_on_shutdown: bool = True,
    retry_inline: bool = False,
) -> JobRunner:
    """The job runner with the queue limits from the settings (the CLI's: `retry_inline`, no requeueing,
    no waiting for workers that cannot be reached)."""
    return JobRunner(
        store=store,
        backend=backend,
        images_dir=settings.images_dir,
        max_pending_per_user=settings.max_pending_per_user,
        max_queue=settings.max_queue,
        cooldown_seconds=settings.cooldown_seconds,
        max_attempts=settings.max_attempts,
        one_running_per_member=settings.one_running_per_member,
        requeue_on_shutdown=requeue_on_shutdown,
        retry_inline=retry_inline,
        classifier=classifier_from(settings),
    )


def classifier_from(settings: Settings) -> TileClassifier | None:
    """The image classifier IMAGINE_IMAGE_CLASSIFIER asks for; a one-line settings error when it cannot run."""
    try:
        return load_classifier(
            settings.image_classifier, threshold=settings.nudenet_threshold, classes=settings.nudenet_classes
        )
    except ClassifierUnavailable as exc:
        raise SettingsError(
            f"invalid setting IMAGINE_IMAGE_CLASSIFIER={settings.image_classifier}: {exc}"
        ) from None
