"""Start the bot: `python main.py` (what `make run` does). Configuration comes from the environment."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.app import BotApplication
    from bot.config import Config


def main() -> int:
    from bot.config import ConfigError, load_config

    try:
        config = load_config(os.environ)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    from bot.logs import configure_logging

    configure_logging(config.log_level, config.log_format, config.replica_id)
    if config.log_format == "text":  # JSON logs are for machines: no free text among them
        print(banner(config), flush=True)
    # azure-core logs every identity request at INFO; bot.teams.tokens logs what matters about tokens
    logging.getLogger("azure").setLevel(logging.WARNING)
    logging.getLogger("azure.identity").setLevel(logging.ERROR)
    from bot.app import BotApplication

    try:
        app = BotApplication(config)
    except ValueError as exc:  # a setting the components refuse (e.g. a price source field path)
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if not config.auth_enabled:
        logging.getLogger("main").warning(
            "MicrosoftAppId is not set: accepting unauthenticated requests (fine for the Agents Playground, "
            "not for Teams)"
        )
    from state.db import DatabaseUnavailable

    settle_garbage_collector()
    try:
        asyncio.run(_serve(app))
    except DatabaseUnavailable as exc:
        print(f"database unavailable: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


GC_YOUNG_THRESHOLD = 20_000
"""Allocations between two collections of the youngest generation (CPython's default: 700)."""


def settle_garbage_collector() -> None:
    """Everything built so far (modules, the application) lives as long as the process: move it out of the cyclic
    collector's sight (`gc.freeze`), and collect young objects less often. A broadcast allocates a few short-lived
    objects per send, nearly all freed by reference counting; with the defaults the collector ran every 700 of them
    and walked the long-lived heap every few seconds (6 % of the CPU of a send). Cycles are still collected."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def banner(config: Config) -> str:
    """The first lines a person sees: where the bot listens and how to talk to it."""
    from bot.config import is_loopback

    host = f"[{config.host}]" if ":" in config.host else config.host
    lines = [f"{config.bot_name}: starting on http://{host}:{config.port}/api/messages"]
    if not config.auth_enabled and is_loopback(config.host):
        lines.append("Chat with it: make playground   (another terminal; the Agents Playground, offline)")
    else:
        lines.append("Teams reaches it at https://<your public host>/api/messages (the Azure Bot's endpoint)")
    return "\n".join(lines)


async def _serve(app: BotApplication) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.run_until(stop)
    finally:
        # Stopped: a second signal (Ctrl-C reaches every process of the terminal's group, and a supervisor may
        # send its own too) must not kill the exiting process. Closing the loop would restore the defaults.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
