"""Deferred results: `analyze <product>` is acknowledged at once, progress is updated in place by
scheduler jobs, and the result (`report`) arrives proactively through `bot.delivery`.

May import `state/`, `scheduler/`, `bot.delivery`, `bot.prices`; never botbuilder or `bot.teams`.
"""
