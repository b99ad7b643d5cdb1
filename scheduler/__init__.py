"""Time and deferred work: the clock and the persistent job scheduler (never imports botbuilder)."""

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
