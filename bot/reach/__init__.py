"""Reaching people who never wrote to the bot (docs/architecture.md, "Reaching everyone").

`people` opens a 1:1 chat with someone the bot has never seen (at the tenant's Bot Connector); when Teams
says the app is not installed for them it parks their notice and, with PROACTIVE_INSTALL, hands them to
`installer`, which installs the app through Graph within Graph's limits, queues a welcome that says why they
get it, and lets the parked notices go after it. `team` pages a team's roster into 1:1 notices.
"""
