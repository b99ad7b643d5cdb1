"""The bot's HTTP API (aiohttp): /api/messages, /api/notify, /api/prices, /healthz, and the shared
JSON body and error helpers.

Routes validate and translate, nothing more. They never import botbuilder: /api/messages hands the raw
activity to a `TurnProcessor` (implemented in `bot.teams`); the others call the delivery and price domain.
May import `state/`, `scheduler/`, `bot.delivery`, `bot.prices`; never `bot.teams`.
"""
