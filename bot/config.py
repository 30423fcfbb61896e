"""Settings: `edgeqa.toml` (or `--config PATH`), overridden by `EDGEQA_<SECTION>__<KEY>`.

Everything is validated once at start so a typo stops the bot with one line naming the
setting, instead of failing an hour later in the middle of an answer. Tokens come only
from the environment and are kept as `SecretStr`, so they never print.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from adapters.slack.config import SlackSettings
from adapters.telegram.config import TelegramSettings
from bot.i18n import AUTO, available_languages
from bot.sections import AccessSettings, Duration, IdList, Section
from knowledge.config import KnowledgeSettings

DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_0.gguf"
DEFAULT_CONFIG_FILE = "edgeqa.toml"

# Settings that are secrets: only ever read from these environment variables.
SECRET_ENV = {
    "telegram_token": "EDGEQA_TELEGRAM_TOKEN",
    "telegram_webhook_secret": "EDGEQA_TELEGRAM_WEBHOOK_SECRET",
    "slack_bot_token": "EDGEQA_SLACK_BOT_TOKEN",
    "slack_app_token": "EDGEQA_SLACK_APP_TOKEN",
    "slack_signing_secret": "EDGEQA_SLACK_SIGNING_SECRET",
    "openai_api_key": "EDGEQA_OPENAI_API_KEY",
    "web_token": "EDGEQA_WEB_TOKEN",
}


class ConfigError(Exception):
    """A setting is wrong; the message is one line that names it."""


class EngineSettings(Section):
    kind: Literal["llama_cpp", "openai"] = "llama_cpp"
    model: str = DEFAULT_MODEL
    model_dir: str = "~/.cache/edgeqa/models"
    threads: int = Field(0, ge=0)
    slots: int = Field(4, ge=1, le=64)
    context_size: int = Field(4096, ge=256)
    batch_size: int = Field(512, ge=16)
    kv_cache_type: Literal["f16", "q8_0", "q4_0"] = "f16"
    flash_attention: bool = True
    max_queue: int = Field(32, ge=0)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    top_k: int = Field(40, ge=0)
    repeat_penalty: float = Field(1.1, gt=0)
    seed: int = -1
    max_tokens: int = Field(512, ge=1)
    stop: list[str] = Field(default_factory=list)
    openai_base_url: str = "http://127.0.0.1:8000/v1"
    openai_model: str = "default"
    openai_timeout: Duration = 120.0
    openai_connect_retries: int = Field(3, ge=0)


def _language(value: Any) -> Any:
    """ "auto" (each user's own language) or a language with a catalog in bot/locales."""
    if not isinstance(value, str):
        return value
    value = value.strip().lower()
    languages = available_languages()
    if value != AUTO and value not in languages:
        raise ValueError(f"use auto or one of: {', '.join(languages)}")
    return value


class BotSettings(Section):
    system_prompt: str = (
        "You are edgeqa, a helpful assistant in a company chat. Answer clearly and concisely, "
        "in the language the question is written in."
    )
    # The language of the bot's own texts: "auto" follows each user's platform language.
    language: Annotated[str, BeforeValidator(_language)] = AUTO
    context_tokens: int = Field(2048, ge=128)
    rate_limit_per_minute: int = Field(10, ge=0)
    max_question_chars: int = Field(8000, ge=100)
    shutdown_grace: Duration = 30.0
    delivery_timeout: Duration = 120.0


class HistorySettings(Section):
    database_url: str = "sqlite+aiosqlite:///./data/edgeqa.db"
    ttl: Duration = 86400.0
    prune_interval: Duration = 300.0


class WebSettings(AccessSettings):
    enabled: Literal["auto"] | bool = "auto"
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    edit_interval: Duration = 0.1
    admins: IdList = Field(default_factory=lambda: ["*"])


class LogSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EDGEQA_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    engine: EngineSettings = EngineSettings()
    bot: BotSettings = BotSettings()
    history: HistorySettings = HistorySettings()
    web: WebSettings = WebSettings()
    telegram: TelegramSettings = TelegramSettings()
    slack: SlackSettings = SlackSettings()
    knowledge: KnowledgeSettings = KnowledgeSettings()
    log: LogSettings = LogSettings()

    # Shortcuts and secrets (environment only; see SECRET_ENV).
    model: str | None = None
    telegram_token: SecretStr | None = None
    telegram_webhook_secret: SecretStr | None = None
    slack_bot_token: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    openai_api_key: SecretStr | None = None
    web_token: SecretStr | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment beats the file (passed in as init kwargs).
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        # Each platform's section checks what it needs from the environment.
        self.telegram.check(token=self.telegram_token, webhook_secret=self.telegram_webhook_secret)
        self.slack.check(
            bot_token=self.slack_bot_token,
            app_token=self.slack_app_token,
            signing_secret=self.slack_signing_secret,
        )
        # An empty token (EDGEQA_WEB_TOKEN= in a compose file) would leave the chat open.
        web_token = self.web_token.get_secret_value().strip() if self.web_token else ""
        if self.web_chat_enabled and not _is_loopback(self.web.host) and not web_token:
            raise ValueError(
                f"web.host is {self.web.host} (not loopback) but EDGEQA_WEB_TOKEN is not set"
            )
        return self

    @property
    def model_ref(self) -> str:
        """EDGEQA_MODEL wins over engine.model."""
        return self.model or self.engine.model

    @property
    def web_chat_enabled(self) -> bool:
        if self.web.enabled == "auto":
            return not (self.telegram.enabled or self.slack.enabled)
        return self.web.enabled

    def access(self, platform: str) -> AccessSettings:
        """A platform's access rules (KeyError for a platform the bot does not have)."""
        sections: dict[str, AccessSettings] = {
            "web": self.web,
            "telegram": self.telegram,
            "slack": self.slack,
        }
        return sections[platform]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(path: str | Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Read the TOML file (default `edgeqa.toml` if present) and the environment.

    Raises ConfigError with one line naming the first wrong setting.
    """
    source = "defaults"
    data: dict[str, Any] = {}
    file = Path(path) if path is not None else Path(DEFAULT_CONFIG_FILE)
    if path is not None or file.exists():
        source = str(file)
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {file}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    _resolve_source_paths(data, file.parent)
    for secret, env_name in SECRET_ENV.items():
        section, _, key = secret.partition("_")
        if secret in data or key in data.get(section, {}):
            raise ConfigError(f"{file}: {secret} must not be in a file; set {env_name} instead")
    environ = dict(os.environ if env is None else env)
    try:
        if env is None:
            return Settings(**data)
        with _patched_environ(environ):
            return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, source, environ)) from None
    except SettingsError as exc:  # an environment variable that does not parse
        raise ConfigError(f"invalid environment variable: {exc}") from None


def _resolve_source_paths(data: dict[str, Any], folder: Path) -> None:
    """`[[knowledge.sources]] path`s relative to the config file's folder, not the cwd."""
    knowledge = data.get("knowledge")
    sources = knowledge.get("sources") if isinstance(knowledge, dict) else None
    for source in sources if isinstance(sources, list) else []:
        path = source.get("path") if isinstance(source, dict) else None
        if isinstance(path, str) and path.strip() and not Path(path).expanduser().is_absolute():
            source["path"] = str(folder.resolve() / path)


class _patched_environ:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.saved: dict[str, str] = {}

    def __enter__(self) -> None:
        self.saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(self.env)

    def __exit__(self, *exc: object) -> None:
        os.environ.clear()
        os.environ.update(self.saved)


def _one_line(exc: ValidationError, source: str, environ: dict[str, str]) -> str:
    error = exc.errors()[0]
    loc = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if not loc:
        return f"invalid configuration: {message}"
    if error["type"] == "extra_forbidden":
        return f"unknown setting {loc} (in {source} or an EDGEQA_ environment variable)"
    env_name = "EDGEQA_" + "__".join(str(part).upper() for part in error["loc"])
    origin = f"from {env_name}" if env_name in environ else f"in {source}"
    shown = error.get("input")
    value = "" if isinstance(shown, dict) else f" = {shown!r}"
    return f"invalid setting {loc}{value}: {message} ({origin})"
