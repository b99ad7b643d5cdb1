"""Notices an organisation runs on top of broadcasts: acknowledgements, delivery reports, schedules, recalls."""
