"""Time and deferred work: the clock, the persistent job scheduler, and the send-side rate limits.

`clock`, `jobs`/`store`/`heap`/`outcomes`/`dispatch`/`scheduler` (persistent jobs; SQL in `store` only),
`ratelimit` (Teams' windows), `sendqueue` (fair order of sends). Imports only `state.db` (the job store's
connection); never `bot/`, `dialogs/` or botbuilder.
"""

from .clock import Clock, FakeClock, SystemClock
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
