"""The Teams app package: manifest.json plus two icons, zipped, built from the bot's config.

    python -m bot.packaging.manifest --out appPackage.zip [--allow-placeholder-id] [--icons DIR]

Teams needs the bot's Microsoft App ID as the manifest's bot id to sideload the package, so building
without MicrosoftAppId fails (exit 2) unless --allow-placeholder-id is given. The icons are the two PNG
files in `icons/` (drawn once with Pillow); --icons DIR uses DIR/color.png and DIR/outline.png instead.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import struct
import sys
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from bot.config import Config, ConfigError, load_config
from dialogs.commands import MENU_COMMANDS

MANIFEST_VERSION = "1.22"
SCHEMA_URL = (
    f"https://developer.microsoft.com/json-schemas/teams/v{MANIFEST_VERSION}/MicrosoftTeams.schema.json"
)
ACCENT_COLOR = "#1E7F5C"
SCOPES = ("personal", "team", "groupChat")
MAX_COMMANDS = 10  # Teams shows at most 10 commands per command list
COLOR_SIZE, OUTLINE_SIZE = 192, 32
ICONS_DIR = Path(__file__).parent / "icons"
PLACEHOLDER_NAMESPACE = uuid.UUID("5d0c3c5e-8f0b-4f5e-9a54-7e1f6c1b2a90")  # for uuid5(bot name)

_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_SEMVER = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ManifestError(ValueError):
    """The package cannot be built as configured; the message says which setting to fix."""


@dataclass(frozen=True)
class Developer:
    """Publisher details Teams shows on the app's About page (placeholders until set)."""

    name: str
    website_url: str
    privacy_url: str
    terms_url: str


@dataclass(frozen=True)
class Package:
    """What `build_package` produced: the manifest, and warnings worth printing."""

    manifest: dict[str, Any]
    warnings: tuple[str, ...]


# ---- the manifest ----------------------------------------------------------------------------------------


def app_id_for(config: Config) -> tuple[str, str | None]:
    """The app/bot id to use and, if it is a placeholder, a warning saying why it cannot be sideloaded."""
    if _GUID.match(config.app_id):
        return config.app_id, None
    placeholder = str(uuid.uuid5(PLACEHOLDER_NAMESPACE, config.bot_name))
    reason = "is not set" if not config.app_id else f"is not a GUID ({config.app_id!r})"
    return placeholder, (
        f"MicrosoftAppId {reason}: using placeholder id {placeholder} derived from the bot name; "
        "Teams needs the bot's real Microsoft App ID to sideload this package"
    )


def developer_from(settings: Mapping[str, str], bot_name: str) -> Developer:
    """Developer details from BOT_DEVELOPER_NAME / BOT_WEBSITE_URL / BOT_PRIVACY_URL / BOT_TERMS_URL."""

    def get(name: str, default: str) -> str:
        return (settings.get(name) or "").strip() or default

    developer = Developer(
        name=get("BOT_DEVELOPER_NAME", bot_name),
        website_url=get("BOT_WEBSITE_URL", "https://example.com/"),
        privacy_url=get("BOT_PRIVACY_URL", "https://example.com/privacy"),
        terms_url=get("BOT_TERMS_URL", "https://example.com/terms"),
    )
    _check_length("BOT_DEVELOPER_NAME", developer.name, 32)
    for env, url in (
        ("BOT_WEBSITE_URL", developer.website_url),
        ("BOT_PRIVACY_URL", developer.privacy_url),
        ("BOT_TERMS_URL", developer.terms_url),
    ):
        if not url.lower().startswith("https://") or len(url) > 2048:
            raise ManifestError(f"{env} must be an https:// URL of at most 2048 characters, got {url!r}")
    return developer


def command_lists() -> list[dict[str, Any]]:
    """One command list per scope, from the bot's command catalogue."""
    if len(MENU_COMMANDS) > MAX_COMMANDS:
        raise ManifestError(
            f"Teams shows at most {MAX_COMMANDS} commands per scope; the bot has {len(MENU_COMMANDS)}"
        )
    commands = [
        {
            "title": c.name,
            "description": c.description if c.usage == c.name else f"{c.description}. Usage: {c.usage}",
        }
        for c in MENU_COMMANDS
    ]
    return [{"scopes": [scope], "commands": commands} for scope in SCOPES]


def build_manifest(config: Config, settings: Mapping[str, str], version: str = "1.0.0") -> Package:
    """The manifest.json content for `config`; `settings` supplies the optional BOT_* developer details."""
    name = config.bot_name
    _check_length("BOT_NAME", name, 30)
    if not _SEMVER.match(version):
        raise ManifestError(f"BOT_APP_VERSION must look like 1.2.3 (semantic version), got {version!r}")
    app_id, warning = app_id_for(config)
    developer = developer_from(settings, name)
    valid_domains = [d.strip() for d in (settings.get("BOT_DOMAIN") or "").split(",") if d.strip()]
    for domain in valid_domains:
        if "/" in domain or ":" in domain:
            raise ManifestError(f"BOT_DOMAIN must be host names without scheme or path, got {domain!r}")
    manifest: dict[str, Any] = {
        "$schema": SCHEMA_URL,
        "manifestVersion": MANIFEST_VERSION,
        "version": version,
        "id": app_id,
        "developer": {
            "name": developer.name,
            "websiteUrl": developer.website_url,
            "privacyUrl": developer.privacy_url,
            "termsOfUseUrl": developer.terms_url,
        },
        "name": {"short": name, "full": f"{name}: price alerts and background analyses"},
        "description": {
            "short": "Watches product prices and alerts you when they move",
            "full": (
                f"{name} watches the prices of products you choose and messages you when they move. "
                "It also runs longer price analyses in the background and tells you when they are done, "
                "so you can keep chatting in the meantime. While you are in the middle of a conversation "
                "with it, it holds its notifications and delivers them when you are finished. "
                "Type 'help' to see what it can do, and 'mute' to pause notifications at any time."
            ),
        },
        "icons": {"color": "color.png", "outline": "outline.png"},
        "accentColor": ACCENT_COLOR,
        "bots": [
            {
                "botId": app_id,
                "scopes": list(SCOPES),
                "supportsFiles": False,
                "isNotificationOnly": False,
                "commandLists": command_lists(),
            }
        ],
        "permissions": ["identity", "messageTeamMembers"],
        "validDomains": valid_domains,
        # The bot's Entra app: what a tenant admin consents to for Graph installs (README "Reaching everyone")
        "webApplicationInfo": {"id": app_id, "resource": f"api://botid-{app_id}"},
    }
    return Package(manifest, (warning,) if warning else ())


def _check_length(setting: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise ManifestError(
            f"{setting} must be at most {limit} characters for Teams, got {len(value)}: {value!r}"
        )


# ---- icons -----------------------------------------------------------------------------------------------


def png_header(data: bytes) -> tuple[int, int, int]:
    """(width, height, colour type) from a PNG's IHDR; ManifestError if it is not a PNG."""
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ManifestError("not a PNG file")
    width, height, _depth, color_type = struct.unpack(">IIBB", data[16:26])
    return width, height, color_type


def load_icons(directory: Path | None) -> dict[str, bytes]:
    """The two icons, from `directory` or the checked-in `icons/`; checked against Teams' sizes."""
    directory = directory or ICONS_DIR
    try:
        icons = {name: (directory / name).read_bytes() for name in ("color.png", "outline.png")}
    except OSError as exc:
        raise ManifestError(f"cannot read icon: {exc}") from None
    for name, size, rgba_only in (("color.png", COLOR_SIZE, False), ("outline.png", OUTLINE_SIZE, True)):
        try:
            width, height, color_type = png_header(icons[name])
        except ManifestError:
            raise ManifestError(f"{name} is not a PNG file") from None
        if (width, height) != (size, size):
            raise ManifestError(f"{name} must be {size}x{size} pixels, got {width}x{height}")
        if rgba_only and color_type != 6:
            raise ManifestError(f"{name} must be RGBA (white on transparent)")
    return icons


# ---- the package -----------------------------------------------------------------------------------------


def write_package(out: Path, manifest: Mapping[str, Any], icons: Mapping[str, bytes]) -> None:
    """Zip manifest.json and the icons at the archive root (as Teams expects), reproducibly, atomically."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        files = {
            "manifest.json": json.dumps(manifest, indent=2, ensure_ascii=False).encode() + b"\n",
            **icons,
        }
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_bytes(buffer.getvalue())
    partial.replace(out)


def _settings(environ: Mapping[str, str], env_file: Path | None) -> dict[str, str]:
    """The environment over `.env`, as load_config sees it, for the packaging-only BOT_* settings."""
    values: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(environ)
    return values


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    env_file: Path | None = Path(".env"),
) -> int:
    """Build the package; returns the exit status (2 with one line on stderr for bad configuration)."""
    parser = argparse.ArgumentParser(
        prog="python -m bot.packaging.manifest", description="Build the Teams app package."
    )
    parser.add_argument("--out", type=Path, default=Path("appPackage.zip"), help="zip to write")
    parser.add_argument(
        "--allow-placeholder-id",
        action="store_true",
        help="build without MicrosoftAppId, with a placeholder id (for validation, not sideloading)",
    )
    parser.add_argument(
        "--icons", type=Path, help="directory with color.png (192x192) and outline.png (32x32)"
    )
    args = parser.parse_args(argv)
    environ = os.environ if environ is None else environ
    try:
        config = load_config(environ, env_file, require_credentials=False)
        if not config.app_id and not args.allow_placeholder_id:
            raise ManifestError(
                "MicrosoftAppId is required to build a sideloadable package "
                "(set it, or pass --allow-placeholder-id for a package that only validates)"
            )
        settings = _settings(environ, env_file)
        package = build_manifest(config, settings, (settings.get("BOT_APP_VERSION") or "").strip() or "1.0.0")
        icons = load_icons(args.icons)
        write_package(args.out, package.manifest, icons)
    except (ConfigError, ManifestError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for warning in package.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {args.out} (app id {package.manifest['id']}, manifest v{MANIFEST_VERSION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
