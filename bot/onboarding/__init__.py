"""Welcomes beyond the install turn: greeting every member of a team 1:1 when that is configured on
purpose (`team_members`), paging the roster through the `Roster` protocol (implemented in `bot.teams`).

May import `state/`, `scheduler/`, `dialogs.welcome_card` and `bot.delivery`; never botbuilder or `bot.teams`.
"""
