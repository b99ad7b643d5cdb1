"""Time and deferred work: the clock and the persistent job scheduler (never imports botbuilder)."""
