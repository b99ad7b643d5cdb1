"""The Teams edge: everything that touches the Bot Framework SDK or the Bot Connector.

The CloudAdapter and authentication (`adapter`), the Bot Connector's calls as JSON and pooled SDK
clients (`connector`) over keep-alive connections (`http1`), models to and from JSON (`wire`), the bot's
token (`tokens`), the channel's JWT signing keys (`signing_keys`), a turn's replies within Teams' limits
(`replies`), the proactive sender (`sender`), the activity handler that runs each turn (`handler`),
the /api/messages turn runner (`turns`), activity → record helpers (`activities`), the roster (`roster`)
and the alert card buttons (`alert_buttons`). This is the one package of `bot/` that imports
botbuilder/botframework/msrest; it implements the protocols the rest of `bot/` defines (Sender,
TurnProcessor, Roster) and only `bot/app.py` imports it, so moving to another SDK is one package.
"""
