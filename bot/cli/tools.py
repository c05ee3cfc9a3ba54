"""The CLI's tools beside jobs: tiny-models, download-models, workers."""

from __future__ import annotations

import logging
from pathlib import Path

from bot.cli.common import EXIT_OK, EXIT_USAGE, CliError
from bot.settings import Settings


def _tiny_models(directory: Path) -> int:
    from bot.engine.tiny_models import build_tiny_models

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if directory.exists() and not directory.is_dir():
        raise CliError(f"{directory} is a file: give a folder for the tiny models", EXIT_USAGE)
    from bot.engine.tiny_blend import build_tiny_blend_model
    from bot.engine.tiny_describe import build_tiny_describe_models

    try:
        sd, text = build_tiny_models(directory)
        caption, clip = build_tiny_describe_models(directory, sd / "tokenizer")  # issue 22: /describe
        unclip = build_tiny_blend_model(directory, sd)  # issue 22: /blend
    except OSError as exc:
        raise CliError(f"cannot write the tiny models to {directory} ({exc.strerror or exc})") from None
    from bot.engine.tiny_models import tiny_clip_path

    print(f"IMAGINE_SD_MODEL={sd}\nIMAGINE_TEXT_MODEL={text}")
    print(f"IMAGINE_AUDIT_CLIP_MODEL={tiny_clip_path(directory)}")
    print(f"IMAGINE_MODELS_FILE={directory / 'models.toml'}")
    print(f"IMAGINE_CAPTION_MODEL={caption}\nIMAGINE_DESCRIBE_CLIP_MODEL={clip}")
    print(f"IMAGINE_BLEND_MODEL={unclip}")
    return EXIT_OK


def _download_models(settings: Settings) -> int:
    from huggingface_hub import snapshot_download

    targets = [("IMAGINE_SD_MODEL", settings.sd_model), ("IMAGINE_TEXT_MODEL", settings.text_model)]
    if settings.safety_checker:
        targets.append(("IMAGINE_SAFETY_CHECKER_MODEL", settings.safety_checker_model))
    for name, model_id in targets:
        if Path(model_id).expanduser().is_dir():
            print(f"{name}={model_id}: local folder, nothing to download")
            continue
        print(f"{name}={model_id}: downloading…", flush=True)
        try:
            # tqdm progress bars come from huggingface_hub itself.
            path = snapshot_download(
                model_id, ignore_patterns=["*.bin", "*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data"]
            )
        except Exception as exc:
            raise CliError(
                f"could not download {name}={model_id!r} ({type(exc).__name__}); check the id and the network"
            ) from None
        print(f"{name}={model_id}: cached at {path}")
    print("done: the bot can now run with HF_HUB_OFFLINE=1")
    return EXIT_OK


def workers_models_line(settings: Settings) -> str:
    """The registry the workers serve (read here: the nodes read the same file from their own settings)."""
    from bot.models.registry import load_registry

    registry = load_registry(settings)  # a broken models file stops the deploy in one line
    names = ", ".join(
        entry.name
        + (" (default)" if entry.name == registry.default else "")
        + (" (draft)" if entry.name == registry.draft else "")
        for entry in registry.enabled
    )
    source = str(registry.path) if registry.path is not None else "IMAGINE_SD_MODEL"
    return (
        f"models: {names} from {source}; each replica keeps at most {settings.max_resident_models} loaded, "
        "and each job goes to a replica holding its model"
    )


def _deploy_workers(settings: Settings, *, replicas: int | None, timeout: float) -> int:
    from bot.engine.workers.deploy import DeployError, DeployTarget, deploy_workers, ray_token

    if replicas is not None and replicas < 1:
        raise CliError(f"`--replicas` must be >= 1, got {replicas}", EXIT_USAGE)
    print(workers_models_line(settings), flush=True)
    try:
        token = ray_token(
            settings.ray_auth_mode,
            settings.ray_auth_token.get_secret_value() if settings.ray_auth_token else None,
            settings.ray_auth_token_path,
        )
        deploy_workers(
            DeployTarget(
                dashboard=settings.ray_dashboard_address,
                replicas=replicas,
                gpus_per_replica=settings.ray_gpus_per_replica,
                port=settings.workers_port,
                ray_token=token,
            ),
            timeout=timeout,
            say=lambda line: print(line, flush=True),
        )
    except DeployError as exc:
        raise CliError(str(exc)) from None
    return EXIT_OK
