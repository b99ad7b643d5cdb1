"""The one door for proactive messages: the interjection policy and the outbox (`proactive`), the
worker that sends within Teams' limits and retries (`worker`), what a failed send means (`failures`),
and the digest that replaces a burst of held items (`digest`).

SDK-free: the worker talks to Teams through its `Sender` protocol (implemented in `bot.teams.sender`).
May import `state/` and `scheduler/`; never botbuilder, `bot.teams` or `dialogs/`.
"""
