"""Conversation logic: the command catalogue and the botbuilder dialogs that implement it.

- `commands`: the catalogue (help text, Teams manifest, router);
- `conditions`, `durations`: pure parsing of what people type (`below 10`, `5%`, `2h`);
- `ports` (+ `memory` for tests): what the dialogs need from the rest of the bot;
- `main_dialog`, `watch_dialog`, `interrupting`, `user_input`, `cards`, `replies`: the dialogs;
- `welcome_card`, `alert_card`: the JSON of the welcome and alert messages; `mentions`: @mentions in them;
- `runner.run_main_dialog`: what the Teams handler calls each turn.

May import botbuilder, `state.model` and `state.clock`; never `bot/`. Nothing is imported here, so
`dialogs.commands` stays cheap to import.
"""
