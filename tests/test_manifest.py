"""The Teams app package validates against Microsoft's schema (from @microsoft/app-manifest) and sideloads."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import referencing
import referencing.exceptions
import referencing.jsonschema
from PIL import Image

from bot.packaging.manifest import main

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "tests" / "node"
SCHEMAS = NODE_DIR / "node_modules" / "@microsoft" / "app-manifest" / "build" / "json-schemas"
SCHEMA_BASE = "https://developer.microsoft.com/json-schemas/"
APP_ID = "0c1b7e4a-1111-2222-3333-444455556666"
EXPECTED_COMMANDS = {"help", "watch", "list", "unwatch", "analyze", "status", "mute", "unmute"}


def env(**overrides: str) -> dict[str, str]:
    """A clean configuration environment: a real-looking app id unless overridden."""
    return {"MicrosoftAppId": APP_ID, "MicrosoftAppPassword": "secret", **overrides}


def build(tmp_path: Path, environ: Mapping[str, str], *args: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    out = tmp_path / "appPackage.zip"
    assert main(["--out", str(out), *args], environ, env_file=None) == 0
    with zipfile.ZipFile(out) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    return json.loads(files.pop("manifest.json")), files


def run_cli(tmp_path: Path, environ: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m bot.packaging.manifest` as `make package` runs it, in an empty directory (so no .env is read)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("Microsoft", "BOT_"))}
    clean["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "bot.packaging.manifest", *args],
        cwd=tmp_path,
        env={**clean, **environ},
        capture_output=True,
        text=True,
        timeout=60,
    )


# ---- the schema, offline, from the npm package --------------------------------------------------------


@pytest.fixture(scope="session")
def schema_dir() -> Path:
    """The npm package's JSON schemas; installs tests/node if needed; skips without node (see below)."""
    if not SCHEMAS.is_dir():
        npm = shutil.which("npm")
        if npm is None or shutil.which("node") is None:
            reason = "node/npm not installed: cannot get the @microsoft/app-manifest schema"
            if os.environ.get("REQUIRE_PLAYGROUND") == "1":
                pytest.fail(reason + " (REQUIRE_PLAYGROUND=1)")
            pytest.skip(reason)
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=600)
    assert SCHEMAS.is_dir(), f"{SCHEMAS} is missing after npm ci"
    return SCHEMAS


def validator_for(schema_dir: Path, manifest_version: str) -> Any:
    """A validator for the Teams schema of `manifest_version`, resolving every $ref from local files only."""
    draft4 = referencing.jsonschema.DRAFT4
    resources = [
        (
            SCHEMA_BASE + path.relative_to(schema_dir).as_posix(),
            draft4.create_resource(json.loads(path.read_text())),
        )
        for path in schema_dir.rglob("*.json")
    ]

    def no_network(uri: str) -> Any:
        raise referencing.exceptions.NoSuchResource(ref=uri)

    registry = referencing.Registry(retrieve=no_network).with_resources(resources)
    schema = json.loads(
        (schema_dir / "teams" / f"v{manifest_version}" / "MicrosoftTeams.schema.json").read_text()
    )
    # The Teams schemas declare draft-04 but use `const` (draft-06) for manifestVersion: honour it too.
    validator_class = jsonschema.validators.extend(
        jsonschema.Draft4Validator, {"const": jsonschema.Draft6Validator.VALIDATORS["const"]}
    )
    return validator_class(
        schema, registry=registry, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER
    )


def errors(validator: Any, manifest: Mapping[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


def test_package_validates_against_the_npm_schema(tmp_path: Path, schema_dir: Path) -> None:
    manifest, icons = build(tmp_path, env())
    assert set(icons) == {"color.png", "outline.png"}
    version = manifest["manifestVersion"]
    assert tuple(int(p) for p in version.split(".")) >= (1, 17)
    assert manifest["$schema"] == f"{SCHEMA_BASE}teams/v{version}/MicrosoftTeams.schema.json"
    assert errors(validator_for(schema_dir, version), manifest) == []


@pytest.mark.parametrize(
    ("breakage", "where"),
    [
        (lambda m: m.update(manifestVersion="1.17"), "manifestVersion"),
        (lambda m: m["bots"][0].update(botId="not-a-guid"), "bots/0/botId"),
        (lambda m: m["bots"][0]["commandLists"][0].update(commands=[{"title": "x", "description": "y"}] * 11),
         "bots/0/commandLists/0/commands"),
        (lambda m: m["developer"].pop("privacyUrl"), "developer"),
    ],
    ids=["version", "bot id", "11 commands", "no privacy url"],
)  # fmt: skip
def test_the_schema_check_can_fail(tmp_path: Path, schema_dir: Path, breakage: Any, where: str) -> None:
    manifest, _ = build(tmp_path, env())
    validator = validator_for(schema_dir, manifest["manifestVersion"])
    breakage(manifest)
    assert any(e.startswith(where + ":") for e in errors(validator, manifest)), errors(validator, manifest)


# ---- content ------------------------------------------------------------------------------------------


def test_bot_id_commands_and_scopes(tmp_path: Path) -> None:
    manifest, _ = build(tmp_path, env(BOT_NAME="Deal Hawk"))
    (bot,) = manifest["bots"]
    assert manifest["id"] == bot["botId"] == APP_ID
    assert manifest["name"]["short"] == "Deal Hawk"
    assert set(bot["scopes"]) == {"personal", "team", "groupChat"}
    assert bot["supportsFiles"] is False and bot["isNotificationOnly"] is False
    assert sorted(scope for lst in bot["commandLists"] for scope in lst["scopes"]) == [
        "groupChat",
        "personal",
        "team",
    ]
    for command_list in bot["commandLists"]:
        titles = [c["title"] for c in command_list["commands"]]
        assert set(titles) >= EXPECTED_COMMANDS and len(titles) == len(set(titles)) <= 10
        assert all(c["description"] for c in command_list["commands"])


def test_web_application_info_names_the_bots_entra_app_for_graph_consent(tmp_path: Path) -> None:
    manifest, _ = build(tmp_path, env())
    assert manifest["webApplicationInfo"] == {"id": APP_ID, "resource": f"api://botid-{APP_ID}"}


def test_developer_details_come_from_the_environment(tmp_path: Path) -> None:
    manifest, _ = build(
        tmp_path,
        env(
            BOT_DEVELOPER_NAME="Acme Ltd",
            BOT_WEBSITE_URL="https://acme.test/",
            BOT_PRIVACY_URL="https://acme.test/privacy",
            BOT_TERMS_URL="https://acme.test/terms",
            BOT_DOMAIN="bot.acme.test",
            BOT_APP_VERSION="2.3.4",
        ),
    )
    assert manifest["developer"] == {
        "name": "Acme Ltd",
        "websiteUrl": "https://acme.test/",
        "privacyUrl": "https://acme.test/privacy",
        "termsOfUseUrl": "https://acme.test/terms",
    }
    assert manifest["validDomains"] == ["bot.acme.test"] and manifest["version"] == "2.3.4"


def test_placeholder_id_is_a_stable_uuid5_of_the_bot_name(tmp_path: Path) -> None:
    first, _ = build(tmp_path, {"BOT_NAME": "Price Watch"}, "--allow-placeholder-id")
    again, _ = build(tmp_path, {"BOT_NAME": "Price Watch"}, "--allow-placeholder-id")
    other, _ = build(tmp_path, {"BOT_NAME": "Other Bot"}, "--allow-placeholder-id")
    not_guid, _ = build(tmp_path, env(MicrosoftAppId="my-bot", BOT_NAME="Price Watch"))
    assert first["id"] == again["id"] == first["bots"][0]["botId"] == not_guid["id"]
    assert uuid.UUID(first["id"]).version == 5
    assert other["id"] != first["id"]


def test_package_bytes_are_reproducible(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path / "a.zip")], env(), env_file=None) == 0
    assert main(["--out", str(tmp_path / "b.zip")], env(), env_file=None) == 0
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()


# ---- icons --------------------------------------------------------------------------------------------


def png_header(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type), read straight from the IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height, depth, color_type = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, color_type


def pixels(data: bytes) -> list[tuple[int, ...]]:
    """Every pixel of a PNG, decoded by Pillow."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return list(image.getdata())


def test_icons_have_teams_sizes_and_colours(tmp_path: Path) -> None:
    _, icons = build(tmp_path, env())
    assert png_header(icons["color.png"])[:3] == (192, 192, 8)
    assert png_header(icons["outline.png"]) == (32, 32, 8, 6)  # RGBA
    color = pixels(icons["color.png"])
    assert len({p[:3] for p in color}) >= 2 and any(len(set(p[:3])) > 1 for p in color)  # not greyscale
    outline = pixels(icons["outline.png"])
    visible = [p for p in outline if p[3]]
    assert visible and len(visible) < len(outline)  # a drawing on a transparent background
    assert all(p[:3] == (255, 255, 255) for p in visible)  # white only (alpha softens the edges)


def test_icons_from_a_directory_are_checked(tmp_path: Path) -> None:
    _, drawn = build(tmp_path, env())
    icons = tmp_path / "icons"
    icons.mkdir()
    (icons / "color.png").write_bytes(drawn["outline.png"])  # 32x32 where 192x192 is needed
    (icons / "outline.png").write_bytes(drawn["outline.png"])
    result = run_cli(tmp_path, env(), "--out", "x.zip", "--icons", str(icons))
    assert result.returncode == 2
    assert result.stderr == "error: color.png must be 192x192 pixels, got 32x32\n"
    (icons / "color.png").write_bytes(drawn["color.png"])
    assert run_cli(tmp_path, env(), "--out", "x.zip", "--icons", str(icons)).returncode == 0


# ---- the command line ---------------------------------------------------------------------------------


def test_cli_without_app_id_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run_cli(tmp_path, {}, "--out", "appPackage.zip")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "MicrosoftAppId is required to build a sideloadable package" in result.stderr
    assert not (tmp_path / "appPackage.zip").exists()


def test_cli_with_placeholder_flag_warns_and_builds(tmp_path: Path) -> None:
    result = run_cli(tmp_path, {}, "--out", "appPackage.zip", "--allow-placeholder-id")
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("warning: MicrosoftAppId is not set") and result.stderr.count("\n") == 1
    assert (tmp_path / "appPackage.zip").is_file()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"MicrosoftAppPassword": "x"}, "MicrosoftAppPassword is set but MicrosoftAppId is empty"),
        (env(BOT_NAME="A name that is far too long for Teams"), "BOT_NAME must be at most 30 characters"),
        (env(BOT_PRIVACY_URL="http://acme.test/privacy"), "BOT_PRIVACY_URL must be an https:// URL"),
        (env(BOT_APP_VERSION="1.0"), "BOT_APP_VERSION must look like 1.2.3"),
    ],
    ids=["config error", "long name", "http url", "version"],
)
def test_cli_bad_configuration_exits_2_with_one_line(
    tmp_path: Path, environ: dict[str, str], message: str
) -> None:
    result = run_cli(tmp_path, environ, "--out", "appPackage.zip", "--allow-placeholder-id")
    assert result.returncode == 2
    assert result.stderr.startswith("error: " + message) and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
