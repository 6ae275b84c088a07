"""Retention: which restore points a source keeps (``policy``, ``planner``) and ``drkit forget``."""
