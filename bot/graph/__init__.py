"""Microsoft Graph, for what the Bot Connector cannot do: install the app for people who lack it.

SDK-free (plain aiohttp and JSON): `client` (the calls, errors with Graph's status and Retry-After),
`limits` (Graph's per-app install limits on the injected clock). Tokens per tenant come from
`bot/teams/graph_tokens.py` (azure-identity), injected by `bot/app.py`.
"""
