"""Deferred work: the persistent job scheduler and the send-side rate limits.

`jobs`/`store`/`heap`/`outcomes`/`dispatch`/`scheduler` (persistent jobs; SQL in `store` only),
`ratelimit` (Teams' windows), `sendqueue` (fair order of sends). Imports from `state/` only `state.db` (the
job store's connection) and `state.clock` (re-exported here); never `bot/`, `dialogs/` or botbuilder.
`state/` never imports `scheduler/`.
"""

from state.clock import Clock, FakeClock, SystemClock

from .jobs import Handler, Job, JobSpec, JobState, Misfire, UnknownHandlerError
from .scheduler import Scheduler

__all__ = [
    "Clock",
    "FakeClock",
    "Handler",
    "Job",
    "JobSpec",
    "JobState",
    "Misfire",
    "Scheduler",
    "SystemClock",
    "UnknownHandlerError",
]
