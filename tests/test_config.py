"""Configuration: defaults, .env, and one clear line + exit 2 for bad settings."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import trustme

from bot.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_defaults() -> None:
    config = load_config({}, env_file=None)
    assert (config.host, config.port, config.database.sqlite_path) == ("127.0.0.1", 3978, "data/bot.sqlite3")
    assert not config.auth_enabled


def test_env_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("PORT=4000\nLOG_LEVEL=debug\n")
    config = load_config({"PORT": "4001"}, env_file=env_file)
    assert (config.port, config.log_level) == (4001, "DEBUG")


def test_secrets_are_not_in_repr() -> None:
    config = Config(app_password="hunter2", notify_token="n0tify-s3cret")
    assert "hunter2" not in repr(config) and "n0tify-s3cret" not in repr(config)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"PORT": "abc"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"DATABASE_URL": "mysql://db/bot"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgres:///bot"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://db:99999/bot"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://db/"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://db/bot?sslmode=sometimes"}, "sslmode"),
        ({"DATABASE_URL": "postgresql://db/bot?pool=3"}, "DATABASE_URL option 'pool'"),
        ({"DATABASE_POOL_SIZE": "0"}, "DATABASE_POOL_SIZE"),
        ({"DATABASE_STARTUP_TIMEOUT": "-5"}, "DATABASE_STARTUP_TIMEOUT"),
        ({"DATABASE_URL": "sqlite://host/x"}, "DATABASE_URL"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"TEAMS_TENANT_RPS": "0"}, "TEAMS_TENANT_RPS"),
        ({"HOLD_MAX_SECONDS": "soon"}, "HOLD_MAX_SECONDS"),
        ({"ANALYZE_SECONDS": "inf"}, "ANALYZE_SECONDS"),
        ({"ALERT_COALESCE_SECONDS": "-1"}, "ALERT_COALESCE_SECONDS"),
        ({"RETENTION_DAYS": "0"}, "RETENTION_DAYS"),
        ({"BROADCAST_PAGE_SIZE": "0"}, "BROADCAST_PAGE_SIZE"),
        ({"BROADCAST_PAGE_SIZE": "1e9"}, "BROADCAST_PAGE_SIZE"),
        ({"BROADCAST_PAGE_SIZE": "10001"}, "BROADCAST_PAGE_SIZE"),
        ({"PROGRESS_DELAYS": "15,5"}, "PROGRESS_DELAYS"),
        ({"PROGRESS_DELAYS": "a,b"}, "PROGRESS_DELAYS"),
        ({"WELCOME_TEAM_MEMBERS": "maybe"}, "WELCOME_TEAM_MEMBERS"),
        ({"PRICE_SOURCE": "scraper"}, "PRICE_SOURCE"),
        ({"PRICE_SOURCE": "http"}, "PRICE_URL_TEMPLATE"),
        ({"PRICE_SOURCE": "http", "PRICE_URL_TEMPLATE": "https://x/", "PRICE_FIELD": "p"}, "PRICE_URL_TEMPLATE"),
        ({"MicrosoftAppType": "Wrong"}, "MicrosoftAppType"),
        ({"MicrosoftAppId": "id"}, "MicrosoftAppPassword"),
        ({"MicrosoftAppPassword": "pw"}, "MicrosoftAppId"),
        ({"MicrosoftAppId": "id", "MicrosoftAppPassword": "pw", "MicrosoftAppType": "SingleTenant"},
         "MicrosoftAppTenantId"),
        ({"MicrosoftAppId": "id", "MicrosoftAppType": "UserAssignedMSI"}, "MicrosoftAppTenantId"),
        ({"ToBotFromChannelOpenIdMetadataUrl": "http://login.botframework.com/v1/.well-known/openidconfiguration"},
         "ToBotFromChannelOpenIdMetadataUrl"),
        ({"ToChannelFromBotLoginUrl": "https://login.microsoftonline.us"}, "ToChannelFromBotLoginUrl"),
        ({"ToChannelFromBotLoginUrl": "login.microsoftonline.us/tenant"}, "ToChannelFromBotLoginUrl"),
        ({"SSL_CERT_FILE": "/nonexistent/ca.pem"}, "SSL_CERT_FILE"),
        ({"REQUESTS_CA_BUNDLE": "/nonexistent/bundle.pem"}, "REQUESTS_CA_BUNDLE"),
        ({"ALLOW_UNAUTHENTICATED": "perhaps"}, "ALLOW_UNAUTHENTICATED"),
        ({"HOST": "0.0.0.0"}, "ALLOW_UNAUTHENTICATED"),
        ({"HOST": "10.1.2.3"}, "not a loopback address"),
        ({"HOST": "bot.internal"}, "MicrosoftAppId is empty"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        load_config(env, env_file=None)


PUBLIC = {
    "open_id_metadata_url": "https://login.botframework.com/v1/.well-known/openidconfiguration",
    "token_issuer": "https://api.botframework.com",
    "oauth_scope": "https://api.botframework.com",
}


@pytest.mark.parametrize(("env", "login_url"), [
    ({"MicrosoftAppType": "MultiTenant"}, "https://login.microsoftonline.com/botframework.com"),
    ({"MicrosoftAppType": "SingleTenant", "MicrosoftAppTenantId": "t-1"}, "https://login.microsoftonline.com/t-1"),
    ({"MicrosoftAppType": "UserAssignedMSI", "MicrosoftAppTenantId": "t-1"}, "https://login.microsoftonline.com/t-1"),
])
def test_auth_settings_default_to_the_public_cloud(env: dict[str, str], login_url: str) -> None:
    config = load_config({"MicrosoftAppId": "id", "MicrosoftAppPassword": "pw", **env}, env_file=None)
    assert {name: getattr(config, name) for name in PUBLIC} == PUBLIC
    assert config.channel_login_url == login_url
    sdk = asdict(config.sdk_settings())
    assert sdk["TO_CHANNEL_FROM_BOT_LOGIN_URL"] == login_url
    assert sdk["TO_BOT_FROM_CHANNEL_TOKEN_ISSUER"] == "https://api.botframework.com"


def test_us_government_settings_are_read(tmp_path: Path) -> None:
    """The GCC High / DoD values from the README."""
    ca_file, bundle = tmp_path / "corp-ca.pem", tmp_path / "bundle.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    trustme.CA().cert_pem.write_to_path(str(bundle))
    config = load_config({
        "MicrosoftAppId": "id", "MicrosoftAppPassword": "pw",
        "ToBotFromChannelOpenIdMetadataUrl": "https://login.botframework.azure.us/v1/.well-known/openidconfiguration",
        "ToBotFromChannelTokenIssuer": "https://api.botframework.us",
        "ToChannelFromBotLoginUrl": "https://login.microsoftonline.us/MicrosoftServices.onmicrosoft.us",
        "ToChannelFromBotOAuthScope": "https://api.botframework.us",
        "SSL_CERT_FILE": str(ca_file), "REQUESTS_CA_BUNDLE": str(bundle),
    }, env_file=None)
    assert config.open_id_metadata_url == "https://login.botframework.azure.us/v1/.well-known/openidconfiguration"
    assert config.token_issuer == config.oauth_scope == "https://api.botframework.us"
    assert config.channel_login_url == "https://login.microsoftonline.us/MicrosoftServices.onmicrosoft.us"
    assert config.ca_files == (str(ca_file), str(bundle))


@pytest.mark.parametrize("env", [
    {"HOST": "127.0.0.1"}, {"HOST": "127.0.0.5"}, {"HOST": "::1"}, {"HOST": "localhost"},
    {"HOST": "0.0.0.0", "ALLOW_UNAUTHENTICATED": "true", "METRICS_TOKEN": "m"},
    {"HOST": "0.0.0.0", "MicrosoftAppId": "id", "MicrosoftAppPassword": "pw", "ALLOW_OPEN_METRICS": "true"},
])
def test_unauthenticated_is_accepted_on_loopback_or_when_allowed(env: dict[str, str]) -> None:
    assert load_config(env, env_file=None).host == env["HOST"]


def test_packaging_does_not_care_where_the_bot_listens() -> None:
    assert load_config({"HOST": "0.0.0.0"}, env_file=None, require_credentials=False).host == "0.0.0.0"


def test_unauthenticated_on_a_public_address_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("Microsoft") and k != "ALLOW_UNAUTHENTICATED"}
    env["HOST"] = "0.0.0.0"
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("configuration error: MicrosoftAppId is empty") and "ALLOW_UNAUTHENTICATED=true" in line


def test_main_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("Microsoft")}
    env["PORT"] = "not-a-port"
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["configuration error: PORT must be a number between 1 and 65535, "
                                                  "got 'not-a-port'"]


def test_a_setting_refused_by_a_component_is_also_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("Microsoft")}
    env.update(PRICE_SOURCE="http", PRICE_URL_TEMPLATE="https://prices.example/{product}", PRICE_FIELD="a..b")
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("configuration error: PRICE_FIELD")


@pytest.mark.parametrize("content", [
    "", "not a certificate\n", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"])
def test_a_ca_bundle_openssl_cannot_load_is_refused_naming_the_variable(tmp_path: Path, content: str) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text(content)
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        with pytest.raises(ConfigError, match=f"^{name} names a CA bundle with no PEM certificate"):
            load_config({name: str(bundle)}, env_file=None)
    assert load_config({"SSL_CERT_FILE": str(tmp_path)}, env_file=None).ca_files == (str(tmp_path),), "a directory"


def test_an_unusable_ca_bundle_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("Microsoft")}
    env["SSL_CERT_FILE"] = str(tmp_path / "ca.pem")
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("configuration error: SSL_CERT_FILE names a CA bundle with no PEM certificate")


def test_database_password_is_not_in_repr() -> None:
    config = load_config({"DATABASE_URL": "postgresql://bot:s3cret@db.internal:5432/bot"}, env_file=None)
    assert "s3cret" not in repr(config) and config.database.display == "postgresql://bot@db.internal:5432/bot"


def test_unreachable_postgresql_is_retried_then_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("Microsoft")}
    env.update(DATABASE_URL=f"postgresql://bot:pw@127.0.0.1:{port}/bot", DATABASE_STARTUP_TIMEOUT="2")
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "waiting for PostgreSQL at postgresql://bot@127.0.0.1:" in result.stderr, "the retry is logged"
    assert "Traceback" not in result.stderr and "pw@" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"database unavailable: cannot connect to postgresql://bot@127.0.0.1:{port}/bot after")
def test_operator_settings() -> None:
    defaults = load_config({}, env_file=None)
    assert defaults.log_format == "text" and defaults.metrics_token == ""
    assert defaults.replica_id == f"{__import__('socket').gethostname()}:{os.getpid()}"
    config = load_config({"LOG_FORMAT": "JSON", "METRICS_TOKEN": "m-tok", "REPLICA_ID": "bot-2"}, env_file=None)
    assert (config.log_format, config.metrics_token, config.replica_id) == ("json", "m-tok", "bot-2")
    assert "m-tok" not in repr(config)
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        load_config({"LOG_FORMAT": "xml"}, env_file=None)
