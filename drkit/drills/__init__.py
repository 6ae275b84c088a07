"""DR drills: restore into a scratch instance, check it, measure RPO and RTO (docs/drills.md)."""
