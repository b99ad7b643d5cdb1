"""Durable state and the domain's shared vocabulary: the bottom floor every other package builds on.

`clock` (the one injected clock: monotonic + UTC wall time), `model` (pure types and key formats), `db` (the
database seam and migrations), and one store per table group: `storage` (the SDK's Storage — the one module
here that imports botbuilder), `references`, `outbox`, `engagement` (the interjection state machine),
`preferences`, `watches`, `prices`, `analyses`. All SQL lives here (and in `scheduler/store.py` for jobs).
Never imports `bot/`, `dialogs/` or `scheduler/` (`scheduler/` builds on `state/`).
"""
