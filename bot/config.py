"""Configuration from the environment (and an optional `.env`), validated once at start-up."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values

from state.db import DatabaseUrlError, sqlite_path_from_url

APP_TYPES = ("MultiTenant", "SingleTenant", "UserAssignedMSI")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 3978
    database_url: str = "sqlite:///data/bot.sqlite3"
    app_id: str = ""
    app_password: str = field(default="", repr=False)
    app_type: str = "MultiTenant"
    app_tenant_id: str = ""
    notify_token: str = field(default="", repr=False)
    log_level: str = "INFO"
    bot_name: str = "Price Watch"
    tenant_rps: float = 50.0
    hold_max_seconds: float = 600.0
    welcome_team_members: bool = False

    @property
    def database_path(self) -> str:
        return sqlite_path_from_url(self.database_url)

    @property
    def auth_enabled(self) -> bool:
        """Without an app id the bot accepts unauthenticated requests (local Playground use only)."""
        return bool(self.app_id)

    def sdk_settings(self) -> SdkSettings:
        """The object the SDK's ConfigurationBotFrameworkAuthentication reads with getattr."""
        return SdkSettings(
            APP_ID=self.app_id,
            APP_PASSWORD=self.app_password,
            APP_TYPE=self.app_type,
            APP_TENANTID=self.app_tenant_id,
        )


@dataclass(frozen=True)
class SdkSettings:
    APP_ID: str
    APP_PASSWORD: str
    APP_TYPE: str
    APP_TENANTID: str


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise ConfigError(f"PORT must be a number between 1 and 65535, got {value!r}") from None
    if not 0 < port < 65536:
        raise ConfigError(f"PORT must be between 1 and 65535, got {port}")
    return port


def _positive(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a positive number, got {value!r}") from None
    if not number > 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    return number


def _flag(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def load_config(environ: Mapping[str, str], env_file: Path | None = Path(".env")) -> Config:
    """Build the config from `environ`, with values from `env_file` (if present) as defaults."""
    values: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(environ)

    def get(name: str, default: str) -> str:
        return values.get(name, default).strip()

    defaults = Config()
    app_type = get("MicrosoftAppType", defaults.app_type) or defaults.app_type
    if app_type not in APP_TYPES:
        raise ConfigError(f"MicrosoftAppType must be one of {', '.join(APP_TYPES)}, got {app_type!r}")
    log_level = get("LOG_LEVEL", defaults.log_level).upper()
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    config = Config(
        host=get("HOST", defaults.host) or defaults.host,
        port=_port(get("PORT", str(defaults.port))),
        database_url=get("DATABASE_URL", defaults.database_url) or defaults.database_url,
        app_id=get("MicrosoftAppId", ""),
        app_password=get("MicrosoftAppPassword", ""),
        app_type=app_type,
        app_tenant_id=get("MicrosoftAppTenantId", ""),
        notify_token=get("NOTIFY_TOKEN", ""),
        log_level=log_level,
        bot_name=get("BOT_NAME", defaults.bot_name) or defaults.bot_name,
        tenant_rps=_positive("TEAMS_TENANT_RPS", get("TEAMS_TENANT_RPS", str(defaults.tenant_rps))),
        hold_max_seconds=_positive("HOLD_MAX_SECONDS", get("HOLD_MAX_SECONDS", str(defaults.hold_max_seconds))),
        welcome_team_members=_flag("WELCOME_TEAM_MEMBERS", get("WELCOME_TEAM_MEMBERS", "false")),
    )
    try:
        config.database_path  # noqa: B018 - validates the URL
    except DatabaseUrlError as exc:
        raise ConfigError(str(exc)) from None
    if config.app_password and not config.app_id:
        raise ConfigError("MicrosoftAppPassword is set but MicrosoftAppId is empty; set both or neither")
    if config.app_id and config.app_type != "UserAssignedMSI" and not config.app_password:
        raise ConfigError("MicrosoftAppId is set but MicrosoftAppPassword is empty")
    if config.app_type == "SingleTenant" and config.app_id and not config.app_tenant_id:
        raise ConfigError("MicrosoftAppType=SingleTenant needs MicrosoftAppTenantId")
    logging.getLogger(__name__).debug("config loaded: %r", config)
    return config
