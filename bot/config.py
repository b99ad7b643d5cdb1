"""Configuration from the environment (and an optional `.env`), validated once at start-up."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values

from bot.proxy import ProxySettings
from bot.service_urls import DEFAULT_SERVICE_URL_HOSTS, parse_hosts
from state.db import DatabaseUrl, DatabaseUrlError, parse_database_url

APP_TYPES = ("MultiTenant", "SingleTenant", "UserAssignedMSI")
# Public-cloud defaults of the Bot Framework endpoints (Microsoft's names; sovereign values in the README).
PUBLIC_OPENID_METADATA_URL = "https://login.botframework.com/v1/.well-known/openidconfiguration"
PUBLIC_TOKEN_ISSUER = "https://api.botframework.com"
PUBLIC_LOGIN_HOST = "https://login.microsoftonline.com"
MULTI_TENANT_LOGIN_TENANT = "botframework.com"
PUBLIC_OAUTH_SCOPE = "https://api.botframework.com"
PUBLIC_GRAPH_URL = "https://graph.microsoft.com"
PUBLIC_TEAMS_SERVICE_URL = "https://smba.trafficmanager.net/teams/"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")


def default_replica_id() -> str:
    """hostname:pid, unique per process on a host (REPLICA_ID overrides it)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 3978
    database_url: str = field(default="sqlite:///data/bot.sqlite3", repr=False)  # may hold a password
    database_startup_timeout: float = 30.0
    database_pool_size: int = 10
    database_busy_timeout: float = 10.0  # SQLite: seconds a statement waits for another process's lock
    app_id: str = ""
    app_password: str = field(default="", repr=False)
    app_type: str = "MultiTenant"
    app_tenant_id: str = ""
    open_id_metadata_url: str = PUBLIC_OPENID_METADATA_URL  # ToBotFromChannelOpenIdMetadataUrl
    token_issuer: str = PUBLIC_TOKEN_ISSUER  # ToBotFromChannelTokenIssuer
    login_url: str = ""  # ToChannelFromBotLoginUrl; empty: the default for the app type (see channel_login_url)
    oauth_scope: str = PUBLIC_OAUTH_SCOPE  # ToChannelFromBotOAuthScope
    ca_files: tuple[str, ...] = ()  # SSL_CERT_FILE / REQUESTS_CA_BUNDLE, trusted besides the system store
    allow_unauthenticated: bool = False
    notify_token: str = field(default="", repr=False)
    log_level: str = "INFO"
    log_format: str = "text"
    metrics_token: str = field(default="", repr=False)
    allow_open_metrics: bool = False  # /metrics without METRICS_TOKEN on a non-loopback HOST
    prices_token: str = field(default="", repr=False)  # Bearer token of POST /api/prices; empty = off
    allowed_tenants: tuple[str, ...] = ()  # ALLOWED_TENANTS; empty = every tenant
    max_analyses_per_user: int = 3  # MAX_ANALYSES_PER_USER: running at once
    max_analyses_per_tenant: int = 100  # MAX_ANALYSES_PER_TENANT: running at once
    replica_id: str = field(default_factory=default_replica_id)
    bot_name: str = "Price Watch"
    tenant_rps: float = 50.0
    hold_max_seconds: float = 600.0
    welcome_team_members: bool = False
    price_source: str = "demo"
    price_url_template: str = ""
    price_field: str = ""
    price_currency_field: str = ""
    price_url_field: str = ""
    price_source_name: str = ""
    analyze_seconds: float = 30.0
    progress_delays: tuple[float, ...] = (5.0, 15.0, 30.0)
    alert_coalesce_seconds: float = 3.0
    retention_days: float = 30.0
    lease_seconds: float = 20.0
    service_url_hosts: tuple[str, ...] = DEFAULT_SERVICE_URL_HOSTS  # SERVICE_URL_HOSTS: where the token may go
    proxies: ProxySettings = field(default_factory=ProxySettings)  # HTTPS_PROXY, HTTP_PROXY, NO_PROXY
    graph_url: str = PUBLIC_GRAPH_URL  # GRAPH_URL: Microsoft Graph of the bot's cloud
    proactive_install: bool = False  # PROACTIVE_INSTALL: install the app for people Teams says lack it
    teams_catalog_app_id: str = ""  # TEAMS_CATALOG_APP_ID: the app's id in the organisation's catalog
    teams_service_url: str = PUBLIC_TEAMS_SERVICE_URL  # TEAMS_SERVICE_URL: for tenants never heard from
    broadcast_page: int = 1000  # recipients a broadcast writes per transaction

    @property
    def database(self) -> DatabaseUrl:
        """DATABASE_URL, checked: which engine, and where."""
        return parse_database_url(self.database_url)

    @property
    def auth_enabled(self) -> bool:
        """Without an app id the bot accepts unauthenticated requests (local Playground use only)."""
        return bool(self.app_id)

    @property
    def channel_login_url(self) -> str:
        """Where the bot gets its tokens for the Bot Connector: the setting, else the public cloud's
        `botframework.com` tenant (MultiTenant) or the app's own tenant (SingleTenant, UserAssignedMSI)."""
        if self.login_url:
            return self.login_url
        if self.app_type == "MultiTenant" or not self.app_tenant_id:
            return f"{PUBLIC_LOGIN_HOST}/{MULTI_TENANT_LOGIN_TENANT}"
        return f"{PUBLIC_LOGIN_HOST}/{self.app_tenant_id}"

    def graph_login_url(self, tenant_id: str) -> str:
        """Where Graph tokens for a customer's tenant come from: the origin of `ToChannelFromBotLoginUrl` and
        that tenant (never botframework.com: Graph needs a token of the organisation it acts in)."""
        parts = urlsplit(self.channel_login_url)
        return f"{parts.scheme}://{parts.netloc}/{tenant_id}"

    def sdk_settings(self) -> SdkSettings:
        """The object the SDK's ConfigurationBotFrameworkAuthentication reads with getattr."""
        return SdkSettings(
            APP_ID=self.app_id,
            APP_PASSWORD=self.app_password,
            APP_TYPE=self.app_type,
            APP_TENANTID=self.app_tenant_id,
            TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL=self.open_id_metadata_url,
            TO_BOT_FROM_CHANNEL_TOKEN_ISSUER=self.token_issuer,
            TO_CHANNEL_FROM_BOT_LOGIN_URL=self.channel_login_url,
            TO_CHANNEL_FROM_BOT_OAUTH_SCOPE=self.oauth_scope,
        )


@dataclass(frozen=True)
class SdkSettings:
    APP_ID: str
    APP_PASSWORD: str
    APP_TYPE: str
    APP_TENANTID: str
    TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL: str
    TO_BOT_FROM_CHANNEL_TOKEN_ISSUER: str
    TO_CHANNEL_FROM_BOT_LOGIN_URL: str
    TO_CHANNEL_FROM_BOT_OAUTH_SCOPE: str


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise ConfigError(f"PORT must be a number between 1 and 65535, got {value!r}") from None
    if not 0 < port < 65536:
        raise ConfigError(f"PORT must be between 1 and 65535, got {port}")
    return port


def _number(name: str, value: str, *, zero_ok: bool = False) -> float:
    wanted = "zero or a positive number" if zero_ok else "a positive number"
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name} must be {wanted}, got {value!r}") from None
    if not (number >= 0 if zero_ok else number > 0) or number == float("inf"):
        raise ConfigError(f"{name} must be {wanted}, got {value!r}")
    return number


def _count(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number of at least 1, got {value!r}") from None
    if number < 1:
        raise ConfigError(f"{name} must be a whole number of at least 1, got {value!r}")
    return number


def _lease(name: str, value: str) -> float:
    seconds = _positive(name, value)
    if not 3 <= seconds <= 3600:
        raise ConfigError(f"{name} must be between 3 and 3600 seconds, got {value!r}")
    return seconds


def _positive(name: str, value: str) -> float:
    return _number(name, value)


def _non_negative(name: str, value: str) -> float:
    return _number(name, value, zero_ok=True)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _delays(value: str) -> tuple[float, ...]:
    try:
        delays = tuple(float(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"PROGRESS_DELAYS must be comma-separated seconds like 5,15,30, got {value!r}") from None
    if not delays or any(not d > 0 for d in delays) or list(delays) != sorted(delays):
        raise ConfigError(f"PROGRESS_DELAYS must be increasing positive seconds like 5,15,30, got {value!r}")
    return delays


def _flag(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _tenants(value: str) -> tuple[str, ...]:
    tenants = tuple(dict.fromkeys(part.strip().lower() for part in value.split(",") if part.strip()))
    for tenant in tenants:
        if len(tenant) > 100 or not tenant.isascii() or not tenant.isprintable() or " " in tenant:
            raise ConfigError(f"ALLOWED_TENANTS must be comma-separated tenant ids, got {tenant!r}")
    return tenants


def _https_url(name: str, value: str, *, needs_path: bool = False) -> str:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname or (needs_path and not parts.path.strip("/")):
        example = "https://login.microsoftonline.com/botframework.com" if needs_path else "https://host/path"
        raise ConfigError(f"{name} must be an https URL like {example}, got {value!r}")
    return value


_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _guid(name: str, value: str) -> str:
    if value and not _GUID.fullmatch(value):
        raise ConfigError(f"{name} must be empty or a GUID like 00000000-0000-0000-0000-000000000000, got {value!r}")
    return value.lower()


def _origin(name: str, value: str) -> str:
    """An https origin (scheme and host, no path): Graph's base URL."""
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname or parts.path.strip("/") or parts.query or parts.fragment:
        raise ConfigError(f"{name} must be an https origin like https://graph.microsoft.com, got {value!r}")
    return f"https://{parts.netloc}"


def _ca_files(values: Mapping[str, str]) -> tuple[str, ...]:
    files: list[str] = []
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        path = values.get(name, "").strip()
        if not path:
            continue
        if not Path(path).exists():
            raise ConfigError(f"{name} names a CA bundle that does not exist: {path!r}")
        _readable_bundle(name, path)
        if path not in files:
            files.append(path)
    return tuple(files)


def _readable_bundle(name: str, path: str) -> None:
    """Load the bundle once now, so a file that cannot be read or holds no PEM certificate stops start-up with
    one line naming the variable, not a traceback from the first TLS context (bot/tls.py)."""
    if Path(path).is_dir():
        return  # a directory of hashed certificates: OpenSSL reads each one when it needs it
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise ConfigError(f"{name} names a CA bundle with no PEM certificate OpenSSL can load: {path!r} "
                          f"({exc.reason or exc})") from None
    except OSError as exc:
        raise ConfigError(f"{name} names a CA bundle that cannot be read: {path!r} ({exc.strerror or exc})") from None


def _proxies(values: Mapping[str, str]) -> ProxySettings:
    try:
        return ProxySettings.from_values(values)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _service_url_hosts(value: str) -> tuple[str, ...]:
    if not value:
        return DEFAULT_SERVICE_URL_HOSTS
    try:
        return parse_hosts(value)
    except ValueError as exc:
        raise ConfigError(f"SERVICE_URL_HOSTS {exc}") from None


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_config(
    environ: Mapping[str, str], env_file: Path | None = Path(".env"), *, require_credentials: bool = True
) -> Config:
    """Build the config from `environ`, with values from `env_file` (if present) as defaults.

    `require_credentials=False` (building the app package) needs only the app id, not its secret."""
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
        database_startup_timeout=_positive(
            "DATABASE_STARTUP_TIMEOUT", get("DATABASE_STARTUP_TIMEOUT", str(defaults.database_startup_timeout))),
        database_pool_size=_count("DATABASE_POOL_SIZE", get("DATABASE_POOL_SIZE", str(defaults.database_pool_size))),
        database_busy_timeout=_positive(
            "DATABASE_BUSY_TIMEOUT", get("DATABASE_BUSY_TIMEOUT", str(defaults.database_busy_timeout))),
        app_id=get("MicrosoftAppId", ""),
        app_password=get("MicrosoftAppPassword", ""),
        app_type=app_type,
        app_tenant_id=get("MicrosoftAppTenantId", ""),
        open_id_metadata_url=_https_url("ToBotFromChannelOpenIdMetadataUrl", get(
            "ToBotFromChannelOpenIdMetadataUrl", defaults.open_id_metadata_url) or defaults.open_id_metadata_url),
        token_issuer=get("ToBotFromChannelTokenIssuer", defaults.token_issuer) or defaults.token_issuer,
        login_url=get("ToChannelFromBotLoginUrl", "").rstrip("/"),
        oauth_scope=get("ToChannelFromBotOAuthScope", defaults.oauth_scope) or defaults.oauth_scope,
        ca_files=_ca_files(values),
        allow_unauthenticated=_flag("ALLOW_UNAUTHENTICATED", get("ALLOW_UNAUTHENTICATED", "false")),
        notify_token=get("NOTIFY_TOKEN", ""),
        log_level=log_level,
        log_format=_choice("LOG_FORMAT", get("LOG_FORMAT", defaults.log_format).lower(), LOG_FORMATS),
        metrics_token=get("METRICS_TOKEN", ""),
        allow_open_metrics=_flag("ALLOW_OPEN_METRICS", get("ALLOW_OPEN_METRICS", "false")),
        prices_token=get("PRICES_TOKEN", ""),
        allowed_tenants=_tenants(get("ALLOWED_TENANTS", "")),
        max_analyses_per_user=_count("MAX_ANALYSES_PER_USER", get("MAX_ANALYSES_PER_USER", "3")),
        max_analyses_per_tenant=_count("MAX_ANALYSES_PER_TENANT", get("MAX_ANALYSES_PER_TENANT", "100")),
        replica_id=get("REPLICA_ID", "") or defaults.replica_id,
        bot_name=get("BOT_NAME", defaults.bot_name) or defaults.bot_name,
        tenant_rps=_positive("TEAMS_TENANT_RPS", get("TEAMS_TENANT_RPS", str(defaults.tenant_rps))),
        hold_max_seconds=_positive("HOLD_MAX_SECONDS", get("HOLD_MAX_SECONDS", str(defaults.hold_max_seconds))),
        welcome_team_members=_flag("WELCOME_TEAM_MEMBERS", get("WELCOME_TEAM_MEMBERS", "false")),
        price_source=_choice("PRICE_SOURCE", get("PRICE_SOURCE", defaults.price_source).lower(),
                             ("demo", "http", "none")),
        price_url_template=get("PRICE_URL_TEMPLATE", ""),
        price_field=get("PRICE_FIELD", ""),
        price_currency_field=get("PRICE_CURRENCY_FIELD", ""),
        price_url_field=get("PRICE_URL_FIELD", ""),
        price_source_name=get("PRICE_SOURCE_NAME", ""),
        analyze_seconds=_positive("ANALYZE_SECONDS", get("ANALYZE_SECONDS", str(defaults.analyze_seconds))),
        progress_delays=_delays(get("PROGRESS_DELAYS", ",".join(f"{d:g}" for d in defaults.progress_delays))),
        retention_days=_positive("RETENTION_DAYS", get("RETENTION_DAYS", str(defaults.retention_days))),
        lease_seconds=_lease("LEASE_SECONDS", get("LEASE_SECONDS", str(defaults.lease_seconds))),
        service_url_hosts=_service_url_hosts(get("SERVICE_URL_HOSTS", "")),
        proxies=_proxies(values),
        broadcast_page=_count("BROADCAST_PAGE_SIZE", get("BROADCAST_PAGE_SIZE", str(defaults.broadcast_page))),
        alert_coalesce_seconds=_non_negative(
            "ALERT_COALESCE_SECONDS", get("ALERT_COALESCE_SECONDS", str(defaults.alert_coalesce_seconds))),
        graph_url=_origin("GRAPH_URL", get("GRAPH_URL", defaults.graph_url) or defaults.graph_url),
        proactive_install=_flag("PROACTIVE_INSTALL", get("PROACTIVE_INSTALL", "false")),
        teams_catalog_app_id=_guid("TEAMS_CATALOG_APP_ID", get("TEAMS_CATALOG_APP_ID", "")),
        teams_service_url=_https_url("TEAMS_SERVICE_URL", get("TEAMS_SERVICE_URL", defaults.teams_service_url)
                                     or defaults.teams_service_url).rstrip("/") + "/",
    )
    try:
        config.database  # noqa: B018 - validates the URL
    except DatabaseUrlError as exc:
        raise ConfigError(str(exc)) from None
    if config.price_source == "http":
        for variable, value in (("PRICE_URL_TEMPLATE", config.price_url_template), ("PRICE_FIELD", config.price_field)):
            if not value:
                raise ConfigError(f"PRICE_SOURCE=http needs {variable}")
        if "{product}" not in config.price_url_template:
            raise ConfigError("PRICE_URL_TEMPLATE must contain {product}, e.g. https://prices.example/api/{product}")
    if config.broadcast_page > 10_000:
        raise ConfigError(f"BROADCAST_PAGE_SIZE must be at most 10000, got {config.broadcast_page}")
    if config.app_password and not config.app_id:
        raise ConfigError("MicrosoftAppPassword is set but MicrosoftAppId is empty; set both or neither")
    if require_credentials and config.app_id and config.app_type != "UserAssignedMSI" and not config.app_password:
        raise ConfigError("MicrosoftAppId is set but MicrosoftAppPassword is empty")
    if config.app_type == "SingleTenant" and config.app_id and not config.app_tenant_id:
        raise ConfigError("MicrosoftAppType=SingleTenant needs MicrosoftAppTenantId")
    if config.app_type == "UserAssignedMSI" and config.app_id and not config.app_tenant_id:
        raise ConfigError("MicrosoftAppType=UserAssignedMSI needs MicrosoftAppTenantId")
    if config.login_url:
        _https_url("ToChannelFromBotLoginUrl", config.login_url, needs_path=True)
    if config.proactive_install and not config.app_id:
        raise ConfigError("PROACTIVE_INSTALL=true needs MicrosoftAppId (Graph installs the app in its name)")
    if require_credentials and not config.auth_enabled and not config.allow_unauthenticated \
            and not is_loopback(config.host):
        raise ConfigError(
            f"MicrosoftAppId is empty, so the bot would accept unauthenticated requests, and HOST={config.host} is "
            "not a loopback address: anyone could make it send to any serviceUrl. Set MicrosoftAppId (and its "
            "secret), listen on 127.0.0.1, or set ALLOW_UNAUTHENTICATED=true"
        )
    if require_credentials and not config.metrics_token and not config.allow_open_metrics \
            and not is_loopback(config.host):
        raise ConfigError(
            f"METRICS_TOKEN is empty and HOST={config.host} is not a loopback address: /metrics and the /healthz "
            "details (tenants, queues) would be public. Set METRICS_TOKEN, listen on 127.0.0.1, or set "
            "ALLOW_OPEN_METRICS=true"
        )
    logging.getLogger(__name__).debug("config loaded: %r", config)
    return config
