"""Unattended operation: schedule policies (``schedules/*.yaml``), ``schedule lint`` and
``schedule due``.  See docs/scheduling.md."""
