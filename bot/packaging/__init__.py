"""The Teams app package (`python -m bot.packaging.manifest`): manifest.json built from the config, and
the two icons checked in under `icons/`. Imports only `bot.config` and `dialogs.commands`.
"""
