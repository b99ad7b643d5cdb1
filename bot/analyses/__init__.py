"""Deferred results: `analyze PRODUCT` posts one acknowledgement, updated in place with progress by
scheduler jobs, and the result (`report`) arrives proactively through `bot.delivery`.

May import `state/`, `scheduler/`, `bot.delivery`, `bot.prices`; never botbuilder or `bot.teams`.
"""
