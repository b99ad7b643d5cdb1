"""Price watching: where quotes come from (`sources`), the watcher that polls, records and evaluates them
into alerts (`watching`), and what an alert's buttons do (`alert_actions`).

May import `state/`, `scheduler/`, `dialogs.alert_card` (the card's JSON) and `bot.delivery`; never
botbuilder or `bot.teams`.
"""
