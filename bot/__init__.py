"""The bot: the application factory (`app`), configuration (`config`) and one sub-package per concern.

`teams` (the Bot Framework edge), `api` (HTTP routes), `delivery` (the one door for proactive messages),
`prices`, `analyses`, `onboarding` (features), `packaging` (the Teams app package). Only `app` wires them
together and only `teams` imports the SDK; see docs/architecture.md for the import rules.
"""
