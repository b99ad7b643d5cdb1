"""Configuration: defaults, .env, and one clear line + exit 2 for bad settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_defaults() -> None:
    config = load_config({}, env_file=None)
    assert (config.host, config.port, config.database_path) == ("127.0.0.1", 3978, "data/bot.sqlite3")
    assert not config.auth_enabled


def test_env_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("PORT=4000\nLOG_LEVEL=debug\n")
    config = load_config({"PORT": "4001"}, env_file=env_file)
    assert (config.port, config.log_level) == (4001, "DEBUG")


def test_secrets_are_not_in_repr() -> None:
    config = Config(app_password="hunter2", notify_token="tok")
    assert "hunter2" not in repr(config) and "tok" not in repr(config)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"PORT": "abc"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"DATABASE_URL": "postgres://db/bot"}, "DATABASE_URL"),
        ({"DATABASE_URL": "sqlite://host/x"}, "DATABASE_URL"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"TEAMS_TENANT_RPS": "0"}, "TEAMS_TENANT_RPS"),
        ({"HOLD_MAX_SECONDS": "soon"}, "HOLD_MAX_SECONDS"),
        ({"ANALYZE_SECONDS": "inf"}, "ANALYZE_SECONDS"),
        ({"ALERT_COALESCE_SECONDS": "-1"}, "ALERT_COALESCE_SECONDS"),
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
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        load_config(env, env_file=None)


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


def test_operator_settings() -> None:
    defaults = load_config({}, env_file=None)
    assert defaults.log_format == "text" and defaults.metrics_token == ""
    assert defaults.replica_id == f"{__import__('socket').gethostname()}:{os.getpid()}"
    config = load_config({"LOG_FORMAT": "JSON", "METRICS_TOKEN": "m-tok", "REPLICA_ID": "bot-2"}, env_file=None)
    assert (config.log_format, config.metrics_token, config.replica_id) == ("json", "m-tok", "bot-2")
    assert "m-tok" not in repr(config)
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        load_config({"LOG_FORMAT": "xml"}, env_file=None)
